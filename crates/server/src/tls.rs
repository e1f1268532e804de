//! The AMQPS listener: TLS (rustls) in front of the same connection code as plain AMQP.
//!
//! Options as rabbitmq.conf names them: `ssl_options.certfile` / `keyfile` (the server's
//! certificate chain and key, PEM), `ssl_options.cacertfile` (CAs that client certificates
//! must chain to), `ssl_options.verify` (`verify_peer` asks clients for a certificate and checks
//! it; `verify_none` does not ask) and `ssl_options.fail_if_no_peer_cert` (with `verify_peer`,
//! refuse clients that send none). The TLS handshake, then the AMQP one, each have the
//! handshake timeout.
//!
//! [`acceptor_for`] also builds the management API's HTTPS acceptor from the same options under
//! `management.ssl.*`.

use crate::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use warren_broker::Broker;

/// TLS settings (RabbitMQ's `ssl_options.*`).
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub cacertfile: Option<PathBuf>,
    /// `verify = verify_peer`.
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
}

/// A TLS acceptor for the AMQPS listener; errors name the `ssl_options.*` key and the file.
pub fn acceptor(o: &TlsOptions) -> Result<TlsAcceptor, String> {
    acceptor_for(o, "ssl_options")
}

/// A TLS acceptor for the options. `setting` is the prefix of the keys they came from
/// (`ssl_options` for AMQPS, `management.ssl` for the management API): errors name the key,
/// the file and what is wrong with it.
pub fn acceptor_for(o: &TlsOptions, setting: &str) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let file_error = |key: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("{setting}.{key} {}: {e}", path.display())
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&o.certfile)
        .and_then(|i| i.collect())
        .map_err(|e| file_error("certfile", &o.certfile, &e))?;
    if certs.is_empty() {
        return Err(file_error(
            "certfile",
            &o.certfile,
            &"no certificate in the file",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&o.keyfile)
        .map_err(|e| file_error("keyfile", &o.keyfile, &e))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if o.verify_peer {
        let ca = o
            .cacertfile
            .as_ref()
            .ok_or_else(|| format!("{setting}.verify = verify_peer needs {setting}.cacertfile"))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_error("cacertfile", ca, &e))? {
            let c = c.map_err(|e| file_error("cacertfile", ca, &e))?;
            roots.add(c).map_err(|e| file_error("cacertfile", ca, &e))?;
        }
        if roots.is_empty() {
            return Err(file_error("cacertfile", ca, &"no certificate in the file"));
        }
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let v = if o.fail_if_no_peer_cert {
            v
        } else {
            v.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "{setting}.certfile {} with {setting}.keyfile {}: {e}",
            o.certfile.display(),
            o.keyfile.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS connector that presents the options' certificate and trusts only the servers whose
/// certificate chains to `cacertfile` (for links between a cluster's nodes: both sides
/// present the same kind of certificate). Errors name the key and the file.
pub fn connector_for(o: &TlsOptions, setting: &str) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let file_error = |key: &str, path: &Path, e: &dyn std::fmt::Display| {
        format!("{setting}.{key} {}: {e}", path.display())
    };
    let ca = o
        .cacertfile
        .as_ref()
        .ok_or_else(|| format!("{setting}.cacertfile is needed"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_error("cacertfile", ca, &e))? {
        let c = c.map_err(|e| file_error("cacertfile", ca, &e))?;
        roots.add(c).map_err(|e| file_error("cacertfile", ca, &e))?;
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&o.certfile)
        .and_then(|i| i.collect())
        .map_err(|e| file_error("certfile", &o.certfile, &e))?;
    let key = PrivateKeyDer::from_pem_file(&o.keyfile)
        .map_err(|e| file_error("keyfile", &o.keyfile, &e))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("{setting}.certfile with {setting}.keyfile: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts TLS connections until `shutdown` turns true.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    broker: Arc<Broker>,
    config: Arc<ServerConfig>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (broker, config, acceptor) = (broker.clone(), config.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let _ = stream.set_nodelay(true);
                        let local = stream.local_addr().unwrap_or(peer);
                        let tls = match tokio::time::timeout(config.handshake_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::warn!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(%peer, "closing connection: TLS handshake not completed within {:?}", config.handshake_timeout);
                                return;
                            }
                        };
                        let (rd, wr) = tokio::io::split(tls);
                        crate::connection::run_io(rd, wr, peer, local, broker, config).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
}
