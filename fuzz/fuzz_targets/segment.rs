//! Archive segment files: arbitrary bytes as a sealed segment (a damaged disk, a hostile copy of the
//! archive) are read through `Archive::open`, `read` and `read_stream` without a panic or an
//! allocation beyond the file's size; whatever is read lies in the segment's range, in order. The
//! input's first byte picks the mode: 0 writes a valid segment of records cut from the input and
//! flips one bit of it (so the fuzzer starts from well-formed files), anything else takes the rest
//! of the input as the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixfleet_engine::log::archive::{write_segment, Archive, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    // tmpfs when there is one: each input is written as a file (and fsynced in mode 0).
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        std::path::PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("nixfleet-fuzz-segment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = match data.split_first() {
        // Mode 0: a valid segment of records taken from the input, then one byte flipped.
        Some((0, rest)) if rest.len() >= 3 => {
            let (flip, body) = rest.split_at(2);
            let records: Vec<(&[u8], &str)> = body
                .chunks(17)
                .enumerate()
                .map(|(i, c)| (c, ["machine:a", "rollout:r", "release:x"][i % 3]))
                .collect();
            if records.is_empty() {
                return;
            }
            write_segment(&dir, 1, [0; 32], &records).unwrap();
            let path = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
            let mut file = std::fs::read(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            let at = u16::from_le_bytes([flip[0], flip[1]]) as usize;
            if at < file.len() * 2 {
                let i = at % file.len();
                file[i] ^= 1 << (flip[0] % 8);
            }
            file
        }
        Some((_, rest)) => rest.to_vec(),
        None => return,
    };
    // Name the file after the range its header claims (else the open refuses it by name alone).
    let (first, last) = if bytes.len() >= HEADER_LEN as usize {
        (
            u64::from_be_bytes(bytes[8..16].try_into().unwrap()),
            u64::from_be_bytes(bytes[16..24].try_into().unwrap()),
        )
    } else {
        (1, 1)
    };
    std::fs::write(dir.join(format!("{first:020}-{last:020}.seg")), &bytes).unwrap();
    if let Ok(archive) = Archive::open(&dir) {
        let (top, _) = archive.top();
        let mut expect = 1;
        let _ = archive.read(0, u64::MAX, 100_000, &mut |seq, _| {
            // In order; a compacted segment (retention) may skip ranges.
            assert!(seq >= expect, "records come in order");
            assert!(seq <= top);
            expect = seq + 1;
        });
        for stream in ["machine:a", "rollout:r", "release:x", ""] {
            let mut prev = 0;
            let _ = archive.read_stream(stream, 0, 100_000, &mut |seq, _| {
                assert!(seq > prev && seq <= top, "stream records in order, in range");
                prev = seq;
            });
        }
        let _ = archive.get(top);
    }
    let _ = std::fs::remove_dir_all(&dir);
});
