//! `[pega.tls]` and `[mail.tls]`: extra trusted roots (a private CA for on-premises Pega or a
//! relay) and a client certificate for mutual TLS. Files are read and parsed when the
//! configuration is loaded, so `config check` and `serve` refuse the same files, naming the key.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[pega.tls]` (and the files of `[mail.tls]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Extra trusted roots (PEM), beside the built-in ones (Mozilla's, from `webpki-roots`).
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM), for endpoints that require one.
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
}

/// What `[pega.tls]` adds to the client, read from its files.
pub struct TlsMaterial {
    /// Extra trusted roots.
    pub roots: Vec<reqwest::Certificate>,
    /// The client identity for mutual TLS.
    pub identity: Option<reqwest::Identity>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl TlsSettings {
    /// Resolves relative paths against `base` (the configuration file's folder).
    pub fn resolve(&mut self, base: &Path) {
        for path in [
            &mut self.ca_file,
            &mut self.client_cert,
            &mut self.client_key,
        ]
        .into_iter()
        .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// Reads and checks the files; every problem names its key (`pega.tls.ca_file`, ...).
    pub fn load(&self) -> Result<TlsMaterial, Vec<String>> {
        let pem = self.pem("pega.tls")?;
        let mut problems = Vec::new();
        let mut roots = Vec::new();
        if let Some((path, ders)) = &pem.roots {
            for der in ders {
                match reqwest::Certificate::from_der(der) {
                    Ok(c) => roots.push(c),
                    Err(e) => problems.push(format!(
                        "pega.tls.ca_file: {}: not a usable certificate: {e}",
                        path.display()
                    )),
                }
            }
        }
        let identity = pem.identity.and_then(|(mut chain, key)| {
            chain.push(b'\n');
            chain.extend_from_slice(&key);
            reqwest::Identity::from_pem(&chain)
                .map_err(|e| problems.push(format!("pega.tls.client_key: not usable: {e}")))
                .ok()
        });
        if problems.is_empty() {
            Ok(TlsMaterial { roots, identity })
        } else {
            Err(problems)
        }
    }

    /// The files read and checked as PEM; every problem names its key under `section`
    /// (`mail.tls.ca_file`, ...).
    pub fn pem(&self, section: &str) -> Result<PemFiles, Vec<String>> {
        let mut problems = Vec::new();
        let roots = match &self.ca_file {
            None => None,
            Some(path) => match certificates(path) {
                Ok((_, ders)) => Some((path.clone(), ders)),
                Err(e) => {
                    problems.push(format!("{section}.ca_file: {e}"));
                    None
                }
            },
        };
        let identity = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                problems.push(format!(
                    "{section}.client_key: missing (client_cert is set)"
                ));
                None
            }
            (None, Some(_)) => {
                problems.push(format!(
                    "{section}.client_cert: missing (client_key is set)"
                ));
                None
            }
            (Some(cert), Some(key)) => {
                let chain = certificates(cert).map_err(|e| format!("{section}.client_cert: {e}"));
                let key = private_key(key).map_err(|e| format!("{section}.client_key: {e}"));
                match (chain, key) {
                    (Ok((pem, _)), Ok(key)) => Some((pem, key)),
                    (chain, key) => {
                        problems.extend(chain.err().into_iter().chain(key.err()));
                        None
                    }
                }
            }
        };
        if problems.is_empty() {
            Ok(PemFiles { roots, identity })
        } else {
            Err(problems)
        }
    }
}

/// The files of a TLS section, read and checked.
pub struct PemFiles {
    /// The CA file and each certificate in it (DER).
    pub roots: Option<(PathBuf, Vec<CertificateDer<'static>>)>,
    /// The client certificate chain and its private key, as PEM text.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for PemFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemFiles")
            .field("roots", &self.roots.as_ref().map(|(p, d)| (p, d.len())))
            .field("identity", &self.identity.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A PEM file's text and every certificate in it; an error when there is none.
pub(crate) fn certificates(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            path.display()
        ));
    }
    Ok((bytes, certs))
}

/// The PEM text of the file's private key; an error when it holds none. The key's bytes never
/// appear in an error.
pub(crate) fn private_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read(path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(_) => Ok(bytes),
        Err(_) => Err(format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            path.display()
        )),
    }
}

/// A server TLS configuration from PEM: the certificate chain and key, and, when
/// `client_ca` is given, client certificates required and verified against it (the stand-in
/// Pega's HTTPS, the bounce listener's STARTTLS).
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
) -> anyhow::Result<rustls::ServerConfig> {
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    Ok(builder.with_single_cert(chain, key)?)
}

/// A TLS client of `section` (`mail.tls`, `kafka.tls`): Mozilla's roots and `ca_file`'s, the
/// client certificate, if any.
pub fn client_config(files: &TlsSettings, section: &str) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let files = files
        .pem(section)
        .map_err(|p| anyhow::anyhow!(p.join("; ")))?;
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some((path, ders)) = files.roots {
        for der in ders {
            roots.add(der).map_err(|e| {
                anyhow::anyhow!("{section}.ca_file: {}: not usable: {e}", path.display())
            })?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match files.identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain)
                .collect::<Result<_, _>>()
                .map_err(|e| anyhow::anyhow!("{section}.client_cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|_| anyhow::anyhow!("{section}.client_key: no usable private key"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow::anyhow!("{section}.client_key: not usable: {e}"))?
        }
    })
}
