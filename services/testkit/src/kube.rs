//! A real Kubernetes API server for tests: etcd and kube-apiserver, the way envtest runs
//! them. There is no kubelet and no controller manager: tests create Pods and write their
//! status through the API, and nothing acts on objects but the code under test.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tempfile::TempDir;

use crate::{free_port, tool, wait_until};

/// The admin's bearer token; the user is in `system:masters`.
const ADMIN_TOKEN: &str = "ficus-test-admin";

/// How long etcd and the API server may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a start is tried with fresh ports.
const PORT_ATTEMPTS: usize = 5;

/// The API server's log, in the server's directory.
const APISERVER_LOG: &str = "apiserver.log";

/// etcd's log, in the server's directory.
const ETCD_LOG: &str = "etcd.log";

/// How long a CRD may take to be established.
const CRD_TIMEOUT: Duration = Duration::from_secs(30);

/// etcd and kube-apiserver on loopback ports, each with its own directory. Both are
/// killed when this value is dropped.
#[derive(Debug)]
pub struct KubeApiServer {
    dir: TempDir,
    etcd: Child,
    apiserver: Child,
    url: String,
    kubeconfig: PathBuf,
}

impl KubeApiServer {
    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    ///
    /// # Panics
    ///
    /// Panics when a binary is missing (the message says how to install it) or the server
    /// does not become ready in time (the message ends with its log).
    pub async fn start() -> Self {
        let mut last_error = String::new();
        // A port may be taken between picking it and binding it; fresh ports are the fix.
        for _ in 0..PORT_ATTEMPTS {
            match Self::launch().await {
                Ok(server) => return server,
                Err(PortTaken(error)) => last_error = error,
            }
        }
        panic!("kube-apiserver did not start after {PORT_ATTEMPTS} attempts:\n{last_error}");
    }

    async fn launch() -> Result<Self, PortTaken> {
        let dir = tempfile::tempdir().unwrap_or_else(|error| panic!("cannot create a directory: {error}"));
        let (client_port, peer_port, secure_port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new(tool("etcd"))
            .args(["--name", "default", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), ETCD_LOG))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start etcd ({error}); run scripts/install-test-tools.sh"));

        // Service-account tokens are signed with a key of our own.
        let key = rcgen::KeyPair::generate().unwrap_or_else(|error| panic!("cannot generate a key: {error}"));
        write(&dir.path().join("sa.key"), &key.serialize_pem());
        write(&dir.path().join("sa.pub"), &key.public_key_pem());
        write(&dir.path().join("tokens.csv"), &format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n"));
        let path = |name: &str| dir.path().join(name).display().to_string();
        let apiserver = Command::new(tool("kube-apiserver"))
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", path("certs")))
            .arg(format!("--secure-port={secure_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", path("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", path("sa.key")))
            .arg(format!("--token-auth-file={}", path("tokens.csv")))
            .args(["--authorization-mode=RBAC", "--allow-privileged=true"])
            // No controller manager creates the `default` ServiceAccount of namespaces.
            .arg("--disable-admission-plugins=ServiceAccount")
            .stdout(Stdio::null())
            .stderr(log_file(dir.path(), APISERVER_LOG))
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start kube-apiserver ({error}); run scripts/install-test-tools.sh"));
        let url = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut server = Self { dir, etcd, apiserver, url, kubeconfig };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Waits for the serving certificate, writes the kubeconfig, then waits for `/readyz`.
    async fn wait_ready(&mut self) -> Result<(), PortTaken> {
        let certificate = self.dir.path().join("certs/apiserver.crt");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while !certificate.is_file() {
            self.check_alive()?;
            assert!(tokio::time::Instant::now() < deadline, "kube-apiserver wrote no certificate:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The certificate file is written in one go, but give a reader a complete one.
        let ca = wait_until(Duration::from_secs(5), || {
            let certificate = certificate.clone();
            async move { std::fs::read_to_string(certificate).ok().filter(|pem| pem.trim_end().ends_with("-----")) }
        })
        .await;
        write(&self.kubeconfig, &kubeconfig(&self.url, &ca, ADMIN_TOKEN));
        let client = self.client().await;
        let ready = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                let request = http::Request::get("/readyz").body(Vec::new()).unwrap_or_default();
                if client.request_text(request).await.is_ok_and(|body| body == "ok") {
                    return Ok(());
                }
                self.check_alive()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        ready.unwrap_or_else(|_| panic!("kube-apiserver not ready within {START_TIMEOUT:?}:\n{}", self.log()))
    }

    /// Panics when either process exited, unless it exited because its port was taken.
    fn check_alive(&mut self) -> Result<(), PortTaken> {
        for (name, child, log) in
            [("kube-apiserver", &mut self.apiserver, APISERVER_LOG), ("etcd", &mut self.etcd, ETCD_LOG)]
        {
            if let Ok(Some(status)) = child.try_wait() {
                let log = tail(&self.dir.path().join(log));
                if log.contains("address already in use") {
                    return Err(PortTaken(log));
                }
                panic!("{name} exited ({status}):\n{log}");
            }
        }
        Ok(())
    }

    /// The end of the API server's log, for failure messages.
    pub fn log(&self) -> String {
        tail(&self.dir.path().join(APISERVER_LOG))
    }

    /// The API server's URL, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kubeconfig file of the admin (`system:masters`), for helm and kube clients.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The kube-rs configuration of the admin.
    pub async fn config(&self) -> kube::Config {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).unwrap_or_else(|error| panic!("kubeconfig: {error}"));
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|error| panic!("kubeconfig: {error}"))
    }

    /// A client of the admin.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).unwrap_or_else(|error| panic!("kube client: {error}"))
    }

    /// A client acting as `user` in `groups` (impersonated by the admin), to check what
    /// RBAC lets that user do, e.g. `system:serviceaccount:ficus:ficus-planner`.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        let mut config = self.config().await;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|group| (*group).to_owned()).collect());
        kube::Client::try_from(config).unwrap_or_else(|error| panic!("kube client: {error}"))
    }

    /// Creates namespace `name`.
    pub async fn create_namespace(&self, name: &str) {
        let namespaces: Api<Namespace> = Api::all(self.client().await);
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(name.to_owned()), ..Default::default() },
            ..Default::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|error| panic!("create namespace {name}: {error}"));
    }

    /// Creates every CustomResourceDefinition in `path` (a YAML file of one or more
    /// documents, or a directory of them) and waits until each is established.
    pub async fn install_crds(&self, path: &Path) {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|file| file.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let mut names = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                let value: serde_json::Value = serde::Deserialize::deserialize(document)
                    .unwrap_or_else(|error| panic!("{}: {error}", file.display()));
                if value.get("kind").and_then(|kind| kind.as_str()) != Some("CustomResourceDefinition") {
                    continue;
                }
                let crd: CustomResourceDefinition =
                    serde_json::from_value(value).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
                let name = crd.metadata.name.clone().unwrap_or_default();
                crds.create(&PostParams::default(), &crd)
                    .await
                    .unwrap_or_else(|error| panic!("create {name}: {error}"));
                names.push(name);
            }
        }
        for name in names {
            let crds = crds.clone();
            wait_until(CRD_TIMEOUT, || {
                let (crds, name) = (crds.clone(), name.clone());
                async move {
                    let crd = crds.get(&name).await.ok()?;
                    let conditions = crd.status?.conditions?;
                    conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
                }
            })
            .await;
        }
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The Gateway API's standard-channel CRDs, at the version the tools script pins.
pub fn gateway_api_crds() -> PathBuf {
    crds("gateway-api")
}

/// Istio's CRDs, at the version the tools script pins.
pub fn istio_crds() -> PathBuf {
    crds("istio")
}

/// The Prometheus Operator's ServiceMonitor CRD, at the version the tools script pins.
pub fn service_monitor_crds() -> PathBuf {
    crds("prometheus-operator")
}

fn crds(name: &str) -> PathBuf {
    let bin = tool("kube-apiserver");
    let tools = bin.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let dir = tools.join("crds").join(name);
    assert!(dir.is_dir(), "the {name} CRDs are not in {}; run scripts/install-test-tools.sh", dir.display());
    dir
}

fn kubeconfig(url: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  \
         context:\n    cluster: test\n    user: admin\n    namespace: default\ncurrent-context: test\n"
    )
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|error| panic!("cannot write {}: {error}", path.display()));
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    std::fs::File::create(dir.join(name)).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
}

/// The last lines of the log file at `path`, for failure messages.
fn tail(path: &Path) -> String {
    let mut log = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut log);
    }
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A process could not bind its port; the log says which.
struct PortTaken(String);
