//! Real servers for the network tests: python's http.server (over TLS when asked) and a
//! CONNECT proxy, from `server.py` beside this file, and a private CA with its certificates
//! made by the openssl CLI.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::run_ok;

/// A CA made for one test, a server certificate it signed for 127.0.0.1 and localhost, and a
/// client CA with a client certificate.
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second client key, which does not belong to `client_cert`.
    pub other_key: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let p = |n: &str| dir.join(n);
        let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
        let ca = |name: &str| {
            run_ok(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &s(&p(&format!("{name}.key"))),
                    "-out",
                    &s(&p(&format!("{name}.pem"))),
                ],
            );
        };
        ca("test-ca");
        ca("client-ca");
        let leaf = |name: &str, signer: &str, ext: &str| {
            let (key, csr, pem, extfile) = (
                p(&format!("{name}.key")),
                p(&format!("{name}.csr")),
                p(&format!("{name}.pem")),
                p(&format!("{name}.ext")),
            );
            std::fs::write(&extfile, ext).unwrap();
            run_ok(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &s(&key),
                    "-out",
                    &s(&csr),
                ],
            );
            run_ok(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &s(&csr),
                    "-days",
                    "2",
                    "-CA",
                    &s(&p(&format!("{signer}.pem"))),
                    "-CAkey",
                    &s(&p(&format!("{signer}.key"))),
                    "-CAcreateserial",
                    "-extfile",
                    &s(&extfile),
                    "-out",
                    &s(&pem),
                ],
            );
        };
        leaf(
            "server",
            "test-ca",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        leaf("client", "client-ca", "extendedKeyUsage=clientAuth\n");
        run_ok(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &s(&p("other.key")),
            ],
        );
        Pki {
            ca: p("test-ca.pem"),
            server_cert: p("server.pem"),
            server_key: p("server.key"),
            client_ca: p("client-ca.pem"),
            client_cert: p("client.pem"),
            client_key: p("client.key"),
            other_key: p("other.key"),
        }
    }
}

/// A `server.py` running until dropped.
pub struct PyServer {
    pub port: u16,
    log: PathBuf,
    child: Child,
}

impl PyServer {
    /// `server.py files DIR ARGS...` (or `proxy` when `dir` is `None`), logging to `log`.
    pub fn start(dir: Option<&Path>, log: &Path, args: &[&str]) -> PyServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script);
        match dir {
            Some(d) => cmd.arg("files").arg(d),
            None => cmd.arg("proxy"),
        };
        let mut child = cmd
            .arg("--log")
            .arg(log)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("server.py did not start: {line:?}"));
        PyServer {
            port,
            log: log.to_owned(),
            child,
        }
    }

    /// `https://127.0.0.1:PORT/PATH` or `http://...`.
    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/{path}", self.port)
    }

    fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Every request so far, in order, as the server logged it on arrival: before it
    /// answered, so a client that got its answer finds its request here.
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.events("request")
    }

    /// The answers to every request so far, once the server has finished sending them all
    /// (a client may close a connection before the server is done writing to it).
    pub fn answers(&self) -> Vec<serde_json::Value> {
        let start = std::time::Instant::now();
        loop {
            let done = self.events("done");
            if done.len() >= self.requests().len() {
                return done;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "server.py never finished answering"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
