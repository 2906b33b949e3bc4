//! Test kit: a PKI made with rcgen, the real `nixfleet-control-plane` binary on a loopback port,
//! and mTLS clients. For testing only: the keys here are throwaway.
#![allow(dead_code, clippy::unwrap_used)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

pub struct Pki {
    pub dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path, ca_name: &str) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, ca_name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca: Issuer::new(p, key),
        }
    }

    /// Issues `<name>-cert.pem` / `<name>-key.pem`; `server` adds localhost SANs.
    pub fn issue(&self, name: &str, server: bool, expired: bool) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        if server {
            p.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        } else {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{name}-cert.pem")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.join(format!("{name}-key.pem")),
            key.serialize_pem(),
        )
        .unwrap();
    }
}

pub struct Cp {
    pub child: Child,
    pub port: u16,
    pub data: PathBuf,
    pub pki_dir: PathBuf,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Spawns the real control plane on `data` with mutual TLS on 127.0.0.1:`port`, its log on
/// `log`; does not wait for it to serve.
pub fn spawn_cp(data: &Path, pki: &Pki, port: u16, log: &Path) -> Child {
    spawn_cp_env(data, pki, port, log, &[])
}

/// [`spawn_cp`] with extra environment variables (`NIXFLEET_CP_*` settings).
pub fn spawn_cp_env(data: &Path, pki: &Pki, port: u16, log: &Path, env: &[(&str, &str)]) -> Child {
    spawn_cp_under(&[], data, pki, port, log, env)
}

/// [`spawn_cp_env`] under a wrapper command (`wrapper` then the control plane's command line),
/// e.g. strace injecting delays into its syscalls.
pub fn spawn_cp_under(
    wrapper: &[&str],
    data: &Path,
    pki: &Pki,
    port: u16,
    log: &Path,
    env: &[(&str, &str)],
) -> Child {
    let d = &pki.dir;
    let bin = env!("CARGO_BIN_EXE_nixfleet-control-plane");
    let mut cmd = match wrapper.split_first() {
        None => Command::new(bin),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
    };
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .arg("--tls-cert")
        .arg(d.join("cp-cert.pem"))
        .arg("--tls-key")
        .arg(d.join("cp-key.pem"))
        .arg("--client-ca")
        .arg(d.join("ca.pem"))
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

impl Cp {
    /// Starts the control plane with mutual TLS on a free loopback port.
    pub fn start(root: &Path, pki: &Pki) -> Cp {
        Self::start_at(root.join("data"), pki, free_port())
    }

    pub fn start_at(data: PathBuf, pki: &Pki, port: u16) -> Cp {
        Self::start_env(data, pki, port, &[])
    }

    /// [`Cp::start_at`] with extra environment variables.
    pub fn start_env(data: PathBuf, pki: &Pki, port: u16, env: &[(&str, &str)]) -> Cp {
        Self::start_under(&[], data, pki, port, env)
    }

    /// [`Cp::start_env`] under a wrapper command (see [`spawn_cp_under`]).
    pub fn start_under(
        wrapper: &[&str],
        data: PathBuf,
        pki: &Pki,
        port: u16,
        env: &[(&str, &str)],
    ) -> Cp {
        let log = data.with_extension(format!(
            "log.{port}.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let d = &pki.dir;
        let child = spawn_cp_under(wrapper, &data, pki, port, &log, env);
        let cp = Cp {
            child,
            port,
            data,
            pki_dir: d.clone(),
            log,
        };
        let c = cp.client("operator", None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while c.try_call("GET", "/health", None).map(|r| r.0).ok() != Some(200) {
            assert!(
                Instant::now() < deadline,
                "control plane did not come up: {}",
                std::fs::read_to_string(&cp.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cp
    }

    pub fn client(&self, cert: &str, key: Option<&str>) -> Client {
        Client::new(self.port, &self.pki_dir, Some(cert), key)
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Cp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Client {
    pub agent: ureq::Agent,
    pub base: String,
    pub key: Option<String>,
}

fn pem_certs(path: &Path) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(&std::fs::read(path).unwrap())
        .filter_map(|i| match i.unwrap() {
            PemItem::Certificate(c) => Some(c),
            _ => None,
        })
        .collect()
}

impl Client {
    /// A client trusting `ca_dir/ca.pem`, presenting `<cert>-cert.pem` if given.
    pub fn new(port: u16, ca_dir: &Path, cert: Option<&str>, key: Option<&str>) -> Client {
        Self::with_identity(
            port,
            ca_dir,
            cert.map(|c| (ca_dir.to_path_buf(), c.to_string())),
            key,
        )
    }

    /// A client whose certificate comes from another directory (another CA).
    pub fn with_identity(
        port: u16,
        ca_dir: &Path,
        identity: Option<(PathBuf, String)>,
        key: Option<&str>,
    ) -> Client {
        let mut tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&pem_certs(
            &ca_dir.join("ca.pem"),
        )));
        if let Some((dir, name)) = identity {
            let chain = pem_certs(&dir.join(format!("{name}-cert.pem")));
            let k =
                PrivateKey::from_pem(&std::fs::read(dir.join(format!("{name}-key.pem"))).unwrap())
                    .unwrap();
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, k)));
        }
        let agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(90)))
            .build()
            .new_agent();
        Client {
            agent,
            base: format!("https://localhost:{port}"),
            key: key.map(str::to_owned),
        }
    }

    pub fn with_key(mut self, key: &str) -> Client {
        self.key = Some(key.to_owned());
        self
    }

    fn auth(&self) -> Option<String> {
        self.key.as_ref().map(|k| format!("Bearer {k}"))
    }

    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), ureq::Error> {
        let url = format!("{}{}", self.base, path);
        let mut resp = match (method, body) {
            ("GET", _) | ("DELETE", None) => {
                let mut r = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                if let Some(a) = self.auth() {
                    r = r.header("authorization", &a);
                }
                r.call()?
            }
            _ => {
                let mut r = match method {
                    "POST" => self.agent.post(&url),
                    "PATCH" => self.agent.patch(&url),
                    "PUT" => self.agent.put(&url),
                    other => panic!("method {other}"),
                };
                if let Some(a) = self.auth() {
                    r = r.header("authorization", &a);
                }
                r.header("content-type", "application/json")
                    .send(body.unwrap_or("{}"))?
            }
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        Ok((status, text))
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        self.call("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        self.call("POST", path, Some(body))
    }

    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        expect: u16,
    ) -> serde_json::Value {
        let (s, t) = self.call(method, path, body);
        assert_eq!(s, expect, "{method} {path} answered {s}: {t}");
        if t.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&t)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {t}"))
        }
    }
}

/// A valid store path for generation `n` of `host`.
pub fn gen(host: &str, n: u32) -> String {
    format!("/nix/store/{:032}-nixos-system-{host}-{n}", n)
}

/// A report body.
pub fn report(
    host: &str,
    generation: &str,
    success: bool,
    health: Option<bool>,
    tags: &[&str],
) -> String {
    let health = match health {
        None => serde_json::Value::Null,
        Some(ok) => {
            serde_json::json!({"results": [if ok {serde_json::json!({"status":"pass","check_name":"http","duration_ms":1})} else {serde_json::json!({"status":"fail","check_name":"http","duration_ms":1,"message":"connection refused"})}], "all_passed": ok, "timestamp": ""})
        }
    };
    serde_json::json!({"machine_id": host, "current_generation": generation, "success": success, "message": if success {"up-to-date"} else {"failed"}, "timestamp": "", "tags": tags, "health": health, "agent_version": "test", "uptime_seconds": 1}).to_string()
}

/// Standard fleet PKI: cp server cert, clients operator and the given machines.
pub fn fleet_pki(root: &Path, machines: &[&str]) -> Pki {
    let pki = Pki::new(&root.join("pki"), "nixfleet test CA");
    pki.issue("cp", true, false);
    pki.issue("operator", false, false);
    for m in machines {
        pki.issue(m, false, false);
    }
    pki
}

/// Bootstraps and returns the admin key.
pub fn bootstrap(cp: &Cp) -> String {
    let v = cp.client("operator", None).json(
        "POST",
        "/api/v1/keys/bootstrap",
        Some(r#"{"name":"test-admin"}"#),
        200,
    );
    v["key"].as_str().unwrap().to_owned()
}

pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates a release of generation `n` of every host (through `op`, an operator's client) and
/// returns its id.
pub fn create_release(op: &Client, hosts: &[&str], n: u32) -> String {
    let entries: Vec<serde_json::Value> = hosts.iter().map(|h| serde_json::json!({"hostname": h, "store_path": gen(h, n), "platform": "x86_64-linux"})).collect();
    op.json(
        "POST",
        "/api/v1/releases",
        Some(&serde_json::json!({"entries": entries}).to_string()),
        201,
    )["id"]
        .as_str()
        .unwrap()
        .to_owned()
}
