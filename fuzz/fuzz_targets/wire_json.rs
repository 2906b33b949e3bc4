//! Request and response bodies: every wire type of `nixfleet_proto::api::v1` parsed from arbitrary
//! bytes with serde_json never panics, and whatever parses survives a round trip unchanged.
//! The first byte picks the type, so one corpus covers them all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nixfleet_proto::api::v1::*;

fn check<T>(bytes: &[u8], exact: bool)
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(v) = serde_json::from_slice::<T>(bytes) else {
        return;
    };
    let text = serde_json::to_vec(&v).expect("a parsed value serializes");
    let back: T = serde_json::from_slice(&text).expect("what we wrote parses");
    // serde_json's default float parsing is best effort, so `serde_json::Value` payloads
    // (EventRecord.data) may move by one ulp; everything else must come back equal.
    if exact {
        assert_eq!(back, v, "round trip changed the value");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    // Also try every type on every input: the first byte only biases which one is checked first.
    let all: [fn(&[u8]); 35] = [
        |b| check::<Report>(b, true),
        |b| check::<HealthReport>(b, true),
        |b| check::<HealthCheckResult>(b, true),
        |b| check::<RegisterRequest>(b, true),
        |b| check::<LifecycleRequest>(b, true),
        |b| check::<NotifyDeployRequest>(b, true),
        |b| check::<BootstrapRequest>(b, true),
        |b| check::<CreateKeyRequest>(b, true),
        |b| check::<CreateReleaseRequest>(b, true),
        |b| check::<ReleaseEntry>(b, true),
        |b| check::<CreateRolloutRequest>(b, true),
        |b| check::<RolloutTarget>(b, true),
        |b| check::<DesiredGeneration>(b, true),
        |b| check::<MachineStatus>(b, true),
        |b| check::<RegisterResponse>(b, true),
        |b| check::<ApiKeyCreated>(b, true),
        |b| check::<ApiKeyInfo>(b, true),
        |b| check::<CreateReleaseResponse>(b, true),
        |b| check::<Release>(b, true),
        |b| check::<ReleaseDiffChange>(b, true),
        |b| check::<ReleaseDiff>(b, true),
        |b| check::<BatchSummary>(b, true),
        |b| check::<CreateRolloutResponse>(b, true),
        |b| check::<MachineHealth>(b, true),
        |b| check::<BatchDetail>(b, true),
        |b| check::<RolloutEvent>(b, true),
        |b| check::<RolloutDetail>(b, true),
        |b| check::<AuditEntry>(b, true),
        |b| check::<EventRecord>(b, false),
        |b| check::<Readiness>(b, true),
        |b| check::<ErrorBody>(b, true),
        |b| check::<HealthChecksConfig>(b, true),
        |b| check::<SystemdCheck>(b, true),
        |b| check::<HttpCheck>(b, true),
        |b| check::<CommandCheck>(b, true),
    ];
    let first = which as usize % all.len();
    all[first](body);
    for (i, f) in all.iter().enumerate() {
        if i != first {
            f(body);
        }
    }
});
