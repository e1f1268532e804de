//! Certificates for the TLS tests, made by rcgen: a CA, a server certificate for `localhost`
//! and `127.0.0.1` signed by it, and client certificates on demand. The PEM files live in a
//! temporary directory removed on drop.

use crate::TempDir;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::PathBuf;
use warren_server::tls::TlsOptions;

pub struct Pki {
    /// Where the PEM files are (removed when the `Pki` is dropped).
    pub dir: TempDir,
    pub ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A client certificate and its key.
pub struct Identity {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = TempDir::new(&format!("tls-{name}"));
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let ca = p.self_signed(&ca_key).unwrap();
        let srv_key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let srv = p.signed_by(&srv_key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), srv.pem()).unwrap();
        std::fs::write(dir.join("server.key"), srv_key.serialize_pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    pub fn client(&self, cn: &str) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Identity { cert, key }
    }

    /// A cluster node's certificate: for `localhost` and `127.0.0.1`, usable to accept and to
    /// make connections (both ends of a link present one).
    pub fn node(&self) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Identity { cert, key }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn options(&self, verify_peer: bool, fail_if_no_peer_cert: bool) -> TlsOptions {
        TlsOptions {
            certfile: self.dir.join("server.pem"),
            keyfile: self.dir.join("server.key"),
            cacertfile: Some(self.ca_file()),
            verify_peer,
            fail_if_no_peer_cert,
        }
    }
}

/// Makes ring the process's default rustls provider, for clients that build their TLS
/// configuration from the default (rabbitmq-stream-client does). Idempotent.
pub fn install_default_crypto() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
}

impl Identity {
    /// Writes the certificate and key as PEM files in `dir`; returns their paths.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, self.cert.pem()).unwrap();
        std::fs::write(&key, self.key.serialize_pem()).unwrap();
        (cert, key)
    }
}
