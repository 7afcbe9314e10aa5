//! TLS for the admission endpoint: certificates served from files and swapped in when the files
//! change (no restart), the rustls server configuration, and development certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use arc_swap::ArcSwap;
use k8s_openapi::jiff::{SignedDuration, Timestamp, tz::TimeZone};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The certificate currently served, swapped atomically when the files change.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// A resolver serving `key`.
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: ArcSwap::from_pointee(key),
        }
    }

    /// Serves `key` from the next handshake on; connections already open keep theirs.
    pub fn swap(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A certificate chain and key read from PEM files, with the leaf's expiry.
pub struct LoadedCert {
    /// Ready for rustls.
    pub key: CertifiedKey,
    /// The leaf certificate's notAfter.
    pub not_after: Timestamp,
    /// The bytes read, to tell whether the files changed since.
    fingerprint: Vec<u8>,
}

/// Reads `cert` (PEM chain, leaf first) and `key` (PEM private key).
pub fn load(cert: &Path, key: &Path) -> Result<LoadedCert> {
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("reading certificate {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading key {}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| anyhow!("{} holds no certificate", cert.display()))?;
    let not_after =
        not_after(leaf).with_context(|| format!("reading the expiry of {}", cert.display()))?;
    let private: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("parsing key {}", key.display()))?
        .ok_or_else(|| anyhow!("{} holds no private key", key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private)
        .map_err(|e| anyhow!("key {} is not usable: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| anyhow!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    let mut fingerprint = cert_pem;
    fingerprint.extend_from_slice(&key_pem);
    Ok(LoadedCert {
        key: certified,
        not_after,
        fingerprint,
    })
}

/// Polls the certificate files and swaps a changed, valid pair in. Polling (not inotify on the
/// files) because a Secret volume updates by swapping a symlink to a new folder: the file a
/// watch was put on never changes. A pair that fails to load is logged and the old one kept
/// (the two files may be caught half-written).
pub async fn watch(
    resolver: Arc<CertResolver>,
    cert: PathBuf,
    key: PathBuf,
    mut last: Vec<u8>,
    interval: Duration,
    on_load: impl Fn(&LoadedCert) + Send + 'static,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (Ok(mut now), Ok(k)) = (std::fs::read(&cert), std::fs::read(&key)) else {
            continue;
        };
        now.extend_from_slice(&k);
        if now == last {
            continue;
        }
        match load(&cert, &key) {
            Ok(loaded) => {
                tracing::info!(
                    cert = %cert.display(),
                    not_after = %loaded.not_after,
                    "serving a new certificate"
                );
                on_load(&loaded);
                last = loaded.fingerprint.clone();
                resolver.swap(loaded.key);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "certificate files changed but do not load yet; keeping the old certificate")
            }
        }
    }
}

impl LoadedCert {
    /// The bytes of the files this was read from.
    pub fn fingerprint(&self) -> Vec<u8> {
        self.fingerprint.clone()
    }
}

/// TLS 1.2 and 1.3 with the ring provider, ALPN h2 and http/1.1, certificates from `resolver`.
/// With `client_ca` (PEM file of one or more CA certificates), every client must present a
/// certificate signed by one of them, or the handshake fails: that is the apiserver, through
/// the client certificate its admission configuration gives it.
pub fn server_config(
    resolver: Arc<CertResolver>,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("choosing TLS versions")?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading client CA {}", path.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.with_context(|| format!("parsing client CA {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("client CA {} is not usable", path.display()))?;
            }
            if roots.is_empty() {
                bail!("client CA {} holds no certificate", path.display());
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .with_context(|| format!("client CA {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Development certificates: a CA and a serving certificate it signed.
pub struct DevCerts {
    /// The CA certificate (PEM): what a MutatingWebhookConfiguration's caBundle carries.
    pub ca_pem: String,
    /// The serving certificate (PEM).
    pub cert_pem: String,
    /// The serving key (PEM, PKCS#8).
    pub key_pem: String,
}

/// Names a development certificate is valid for: loopback plus the in-cluster Service names of
/// `service` in `namespace`.
pub fn dev_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Makes a CA and a serving certificate for `names`, valid for `days` days.
pub fn generate(names: &[String], days: u32) -> Result<DevCerts> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    // rcgen takes whole days; the certificate starts a day early so a clock a little behind
    // the issuer's still accepts it.
    let day = |from_now: SignedDuration| -> Result<_> {
        let day = Timestamp::now()
            .checked_add(from_now)
            .with_context(|| format!("a certificate valid for {days} days ends after year 9999"))?
            .to_zoned(TimeZone::UTC)
            .date();
        Ok(rcgen::date_time_ymd(
            i32::from(day.year()),
            day.month().unsigned_abs(),
            day.day().unsigned_abs(),
        ))
    };
    let (not_before, not_after) = (
        day(-SignedDuration::from_hours(24))?,
        day(SignedDuration::from_hours(24 * i64::from(days)))?,
    );

    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "plugin-webhook development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca = CertifiedIssuer::self_signed(ca, ca_key).context("signing the CA")?;

    let mut leaf = CertificateParams::new(names.to_vec()).context("certificate names")?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names
            .get(2)
            .cloned()
            .unwrap_or_else(|| "plugin-webhook".into()),
    );
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let key = KeyPair::generate().context("generating the serving key")?;
    let cert = leaf
        .signed_by(&key, &ca)
        .context("signing the serving certificate")?;
    Ok(DevCerts {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (the key names of a kubernetes.io/tls Secret) into
/// `dir`; the key is readable by its owner only, from the moment it exists.
pub fn write(certs: &DevCerts, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text, private) in [
        ("ca.crt", &certs.ca_pem, false),
        ("tls.crt", &certs.cert_pem, false),
        ("tls.key", &certs.key_pem, true),
    ] {
        write_file(&dir.join(name), text, private)?;
    }
    Ok(())
}

/// Replaces `path` with `text` atomically: written to a new temporary file next to it, then
/// renamed over it, so a reader (the certificate poller) sees the old file or the new one. A
/// `private` file is created with mode 0600, so a private key is never readable by others, not
/// even between its creation and a chmod.
pub fn write_file(path: &Path, text: &str, private: bool) -> Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", file_name.to_string_lossy()));
    // A leftover from a crash may have any mode; start from nothing.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", tmp.display()));
        }
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The notAfter of a certificate.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<Timestamp> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    let seconds = parsed.validity().not_after.timestamp();
    Timestamp::from_second(seconds).with_context(|| format!("notAfter {seconds} is out of range"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_certs_load_and_expire_when_asked() {
        let certs = generate(&dev_names("plugin-webhook", "kosmos-system"), 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(&certs, dir.path()).unwrap();
        let loaded = load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        let expected = Timestamp::now() + SignedDuration::from_hours(30 * 24);
        // The certificate's notAfter is midnight of the day, so within a day of the request.
        assert!(
            (expected - SignedDuration::from_hours(24)..=expected).contains(&loaded.not_after),
            "{} vs {expected}",
            loaded.not_after
        );
        assert!(load(&dir.path().join("ca.crt"), &dir.path().join("tls.key")).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_never_readable_by_others() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        // A stale temporary file left world-readable by a crash must not lend its mode.
        let stale = dir.path().join(".tls.key.tmp");
        std::fs::write(&stale, "old").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o666)).unwrap();
        // An existing world-readable key is replaced by a new file, not rewritten in place.
        let key = dir.path().join("tls.key");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let certs = generate(&dev_names("plugin-webhook", "kosmos-system"), 1).unwrap();
        write(&certs, dir.path()).unwrap();
        assert_eq!(mode("tls.key"), 0o600);
        assert_eq!(std::fs::read_to_string(&key).unwrap(), certs.key_pem);
        assert!(!stale.exists());
    }
}
