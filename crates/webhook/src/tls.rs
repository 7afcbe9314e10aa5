//! TLS for the admission endpoint: certificates served from files and swapped in when the files
//! change (no restart), the rustls server configuration, and development certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use arc_swap::ArcSwap;
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
    /// The leaf certificate's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
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
                    not_after = loaded.not_after,
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let date = |unix: i64| {
        let (y, m, d) = civil_from_days(unix.div_euclid(86400));
        rcgen::date_time_ymd(y as i32, m as u8, d as u8)
    };
    let (not_before, not_after) = (date(now - 86400), date(now + i64::from(days) * 86400));

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

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of [`civil_from_days`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One DER element: (tag, content, rest).
fn der_next(input: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input
        .split_first()
        .ok_or_else(|| anyhow!("truncated DER"))?;
    let (&first, mut rest) = rest.split_first().ok_or_else(|| anyhow!("truncated DER"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            bail!("unsupported DER length");
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        bail!("truncated DER");
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The notAfter of a certificate, in seconds since the Unix epoch. Read by hand from the DER
/// (Certificate > TBSCertificate > [version] serial signature issuer validity) to keep an X.509
/// parser out of the dependencies for one field.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<i64> {
    let (_, certificate, _) = der_next(cert.as_ref())?;
    let (_, tbs, _) = der_next(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der_next(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    for _ in 0..3 {
        let (_, _, after) = der_next(rest)?; // serial, signature algorithm, issuer
        rest = after;
    }
    let (_, validity, _) = der_next(rest)?;
    let (_, _, after_not_before) = der_next(validity)?;
    let (tag, time, _) = der_next(after_not_before)?;
    let text = std::str::from_utf8(time).context("certificate time is not ASCII")?;
    let digits = |s: &str| -> Result<i64> { s.parse::<i64>().context("certificate time") };
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(text.get(0..2).unwrap_or_default())?;
            (
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                text.get(2..).unwrap_or_default(),
            )
        }
        0x18 => (
            digits(text.get(0..4).unwrap_or_default())?,
            text.get(4..).unwrap_or_default(),
        ),
        _ => bail!("unexpected time tag {tag:#x}"),
    };
    let field = |i: usize| digits(rest.get(i..i + 2).unwrap_or_default());
    let (month, day, hour, minute, second) =
        (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    Ok(days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn calendar_round_trips() {
        for days in [-1, 0, 1, 59, 365, 11_016, 20_000, 47_482, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn generated_certs_load_and_expire_when_asked() {
        let certs = generate(&dev_names("plugin-webhook", "kosmos-system"), 30).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(&certs, dir.path()).unwrap();
        let loaded = load(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expected = now + 30 * 86400;
        // The certificate's notAfter is midnight of the day, so within a day of the request.
        assert!(
            (expected - 86400..=expected).contains(&loaded.not_after),
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
