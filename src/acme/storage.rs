//! The `storage` folder: one folder per CA (named by the directory's host
//! and port) holding the account key, then one certificate chain and key
//! per certificate, named by its first name. Per CA, so that moving from a
//! staging CA to production orders anew instead of serving the staging
//! certificate, and switching back finds the old account.
//!
//! Folders are 0700 and files 0600. Every file is written to a temporary
//! file in the same folder, synced, renamed over the old one and the folder
//! synced, so a crash leaves the old file or the new one, never half of one.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Creates `storage` and the CA folder in it (and missing parents)
/// private to this user.
pub(super) fn ensure_dir(storage: &Path, ca_dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(ca_dir)?;
    // An existing folder keeps its mode otherwise.
    fs::set_permissions(storage, fs::Permissions::from_mode(0o700))?;
    fs::set_permissions(ca_dir, fs::Permissions::from_mode(0o700))
}

/// Writes a private file atomically: temp file (0600), fsync, rename,
/// fsync of the folder.
pub(super) fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` applies only when the file is created.
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The folder of one CA directory's account and certificates.
pub(super) fn ca_dir(storage: &Path, directory_url: &str) -> PathBuf {
    let authority = directory_url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_else(|| "ca".to_string());
    let safe: String = authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    storage.join(safe)
}

/// The account file in a CA folder.
pub(super) fn account_path(ca_dir: &Path) -> PathBuf {
    ca_dir.join("account.json")
}

/// Certificate chain and key files of the certificate whose first name is `first`.
pub(super) fn cert_paths(dir: &Path, first: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{first}.crt.pem")),
        dir.join(format!("{first}.key.pem")),
    )
}

/// A certificate ready to serve, with its validity.
#[derive(Clone)]
pub(super) struct Issued {
    pub(super) key: Arc<CertifiedKey>,
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
}

/// Parses a chain and key and checks the leaf covers every name.
pub(super) fn parse(chain_pem: &[u8], key_pem: &[u8], names: &[String]) -> Result<Issued, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid certificate PEM: {e}"))?;
    let leaf = chain.first().ok_or("no CERTIFICATE in the chain")?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("invalid certificate: {e}"))?;
    let sans: Vec<String> = match x509.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if let Some(missing) = names.iter().find(|n| !sans.contains(n)) {
        return Err(format!("the certificate does not cover \"{missing}\""));
    }
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    let validity = x509.validity();
    let not_before = time(validity.not_before.timestamp());
    let not_after = time(validity.not_after.timestamp());
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("invalid key PEM: {e}"))?;
    let key = CertifiedKey::from_der(chain, key, &crate::tls::provider())
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(Issued {
        key: Arc::new(key),
        not_before,
        not_after,
    })
}

/// The stored certificate for `names`, if there is one that covers them.
pub(super) fn load(dir: &Path, names: &[String]) -> Result<Option<Issued>, String> {
    let (cert, key) = cert_paths(dir, &names[0]);
    let chain = match fs::read(&cert) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", cert.display())),
    };
    let key_pem = fs::read(&key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    parse(&chain, &key_pem, names)
        .map(Some)
        .map_err(|e| format!("{}: {e}", cert.display()))
}

/// Stores a certificate: the key first, so a chain on disk always has its key.
pub(super) fn save(
    storage: &Path,
    dir: &Path,
    names: &[String],
    chain_pem: &str,
    key_pem: &str,
) -> io::Result<()> {
    ensure_dir(storage, dir)?;
    let (cert, key) = cert_paths(dir, &names[0]);
    write_private(&key, key_pem.as_bytes())?;
    write_private(&cert, chain_pem.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_folders() {
        let dir = std::env::temp_dir().join(format!("fulcrum-acme-storage-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let nested = dir.join("a/b");
        ensure_dir(&dir.join("a"), &nested).unwrap();
        let f = nested.join("x.pem");
        write_private(&f, b"one").unwrap();
        write_private(&f, b"two").unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&nested), 0o700);
        assert_eq!(mode(&dir.join("a")), 0o700);
        assert_eq!(mode(&f), 0o600);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(&nested).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_folder_per_ca() {
        let d = Path::new("/s");
        assert_eq!(
            ca_dir(d, "https://acme-v02.api.letsencrypt.org/directory"),
            Path::new("/s/acme-v02.api.letsencrypt.org")
        );
        assert_eq!(
            ca_dir(d, "https://127.0.0.1:14000/dir"),
            Path::new("/s/127.0.0.1_14000")
        );
    }
}
