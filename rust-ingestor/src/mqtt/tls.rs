//! MQTT over TLS (`VT_MQTT_TLS_ADDR`): TLS 1.2 and 1.3 with the certificate
//! chain and key of two PEM files (a Kubernetes TLS Secret mounted as files,
//! say). The files are looked at again every few seconds and read anew when
//! they changed, so a renewed certificate is served without a restart; a
//! broken renewal keeps the last good one and says so in the log.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::{ring, CryptoProvider};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::ServerConfig;
pub use tokio_rustls::TlsAcceptor;

use crate::config::MqttTls;

/// How often the files' modification times are looked at, at most.
const RECHECK: Duration = Duration::from_secs(10);

/// The acceptor every server thread shares; an error (naming the file) when
/// the files cannot be read or do not hold a matching chain and key.
pub fn acceptor(settings: &MqttTls) -> Result<TlsAcceptor, String> {
    // ring, not aws-lc: it builds with a C compiler alone. It lacks the post-quantum key exchange
    // (X25519MLKEM768), which device TLS stacks do not offer today.
    #[allow(deprecated)]
    let provider = Arc::new(ring::default_provider());
    let resolver = Reloading::new(settings.cert.clone(), settings.key.clone(), provider.clone(), RECHECK)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))
}

/// The newer modification time of the two files, when both can be looked at.
fn modified(cert: &Path, key: &Path) -> Option<SystemTime> {
    let time = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some(time(cert)?.max(time(key)?))
}

/// Serves the last good certificate, reading the files again when they change.
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    recheck: Duration,
    current: RwLock<Arc<CertifiedKey>>,
    /// When the files were last looked at, and their modification time then.
    checked: Mutex<(Instant, Option<SystemTime>)>,
}

impl Reloading {
    fn new(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>, recheck: Duration) -> Result<Self, String> {
        let seen = modified(&cert, &key);
        let current = load(&cert, &key, &provider)?;
        Ok(Self {
            cert,
            key,
            provider,
            recheck,
            current: RwLock::new(Arc::new(current)),
            checked: Mutex::new((Instant::now(), seen)),
        })
    }

    fn serving(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|current| Arc::clone(&current))
    }

    fn reload_if_changed(&self) {
        // One handshake looks; the others meanwhile serve what there is.
        let Ok(mut checked) = self.checked.try_lock() else { return };
        if checked.0.elapsed() < self.recheck {
            return;
        }
        checked.0 = Instant::now();
        let now = modified(&self.cert, &self.key);
        if now == checked.1 {
            return;
        }
        checked.1 = now;
        match load(&self.cert, &self.key, &self.provider) {
            Ok(fresh) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(fresh);
                }
                tracing::info!(cert = %self.cert.display(), "MQTT TLS certificate read again");
            }
            Err(error) => tracing::warn!(%error, "MQTT TLS certificate changed but cannot be used; the last one stays"),
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.reload_if_changed();
        self.serving()
    }
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("vt-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// A fresh self-signed certificate and key (openssl) as `cert.pem` and `key.pem`.
        fn issue(&self, name: &str) {
            let status = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-days", "1", "-subj", &format!("/CN={name}"), "-keyout"])
                .arg(self.0.join("key.pem"))
                .arg("-out")
                .arg(self.0.join("cert.pem"))
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success());
        }

        fn reloading(&self) -> Result<Reloading, String> {
            #[allow(deprecated)]
            let provider = Arc::new(ring::default_provider());
            Reloading::new(self.0.join("cert.pem"), self.0.join("key.pem"), provider, Duration::ZERO)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn served(reloading: &Reloading) -> Vec<u8> {
        reloading.serving().unwrap().end_entity_cert().unwrap().to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_renewal_keeps_the_last_good_one() {
        let dir = Dir::new("renew");
        dir.issue("first");
        let reloading = dir.reloading().unwrap();
        let first = served(&reloading);
        reloading.reload_if_changed();
        assert_eq!(served(&reloading), first, "unchanged files are not read again into another certificate");
        dir.issue("second");
        reloading.reload_if_changed();
        let second = served(&reloading);
        assert_ne!(second, first);
        std::fs::write(dir.0.join("cert.pem"), "half a renewal").unwrap();
        reloading.reload_if_changed();
        assert_eq!(served(&reloading), second);
    }

    #[test]
    fn files_that_are_missing_or_hold_no_certificate_are_named() {
        let dir = Dir::new("broken");
        let e = dir.reloading().unwrap_err();
        assert!(e.contains("cert.pem"), "{e}");
        std::fs::write(dir.0.join("cert.pem"), "not a certificate\n").unwrap();
        let e = dir.reloading().unwrap_err();
        assert!(e.contains("cert.pem") && e.contains("no certificate"), "{e}");
        dir.issue("mismatch");
        let other = Dir::new("other");
        other.issue("other");
        std::fs::copy(other.0.join("key.pem"), dir.0.join("key.pem")).unwrap();
        let e = dir.reloading().unwrap_err();
        assert!(e.contains("key.pem"), "a key of another certificate is refused: {e}");
    }
}
