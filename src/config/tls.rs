//! `[pega.tls]`: extra trusted roots (a private CA for on-premises Pega) and a client
//! certificate for mutual TLS. Files are read and parsed when the configuration is loaded, so
//! `config check` and `serve` refuse the same files, naming the key.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[pega.tls]`.
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
        let mut problems = Vec::new();
        let mut roots = Vec::new();
        if let Some(path) = &self.ca_file {
            match certificates(path) {
                Ok((_, ders)) => {
                    for der in ders {
                        match reqwest::Certificate::from_der(&der) {
                            Ok(c) => roots.push(c),
                            Err(e) => problems.push(format!(
                                "pega.tls.ca_file: {}: not a usable certificate: {e}",
                                path.display()
                            )),
                        }
                    }
                }
                Err(e) => problems.push(format!("pega.tls.ca_file: {e}")),
            }
        }
        let identity = match (&self.client_cert, &self.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                problems.push("pega.tls.client_key: missing (client_cert is set)".into());
                None
            }
            (None, Some(_)) => {
                problems.push("pega.tls.client_cert: missing (client_key is set)".into());
                None
            }
            (Some(cert), Some(key)) => match client_identity(cert, key) {
                Ok(identity) => Some(identity),
                Err(mut e) => {
                    problems.append(&mut e);
                    None
                }
            },
        };
        if problems.is_empty() {
            Ok(TlsMaterial { roots, identity })
        } else {
            Err(problems)
        }
    }
}

/// The client certificate chain and its key as reqwest takes them (one PEM buffer).
fn client_identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, Vec<String>> {
    let chain = certificates(cert).map_err(|e| format!("pega.tls.client_cert: {e}"));
    let key = private_key(key).map_err(|e| format!("pega.tls.client_key: {e}"));
    let (mut pem, key) = match (chain, key) {
        (Ok((pem, _)), Ok(key)) => (pem, key),
        (chain, key) => return Err(chain.err().into_iter().chain(key.err()).collect()),
    };
    pem.push(b'\n');
    pem.extend_from_slice(&key);
    reqwest::Identity::from_pem(&pem)
        .map_err(|e| vec![format!("pega.tls.client_key: not usable: {e}")])
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A PEM file's text and every certificate in it; an error when there is none.
fn certificates(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
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
fn private_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read(path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(_) => Ok(bytes),
        Err(_) => Err(format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            path.display()
        )),
    }
}
