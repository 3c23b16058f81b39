//! TLS for the admin API (`admin.tls_cert`, `admin.tls_key`): the rustls server
//! configuration from PEM files, and [`TlsListener`], a listener for `axum::serve` that
//! hands it only connections whose handshake succeeded.
//!
//! Handshakes run in their own tasks with a deadline, so a client that connects and
//! sends nothing (or plain HTTP) holds up no one else's connection.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin API's TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A PEM file could not be read or holds nothing of the kind expected.
    #[error("cannot read {what} from {path} (set in {setting}); it must be a PEM file")]
    Pem {
        /// `the certificate chain` or `the private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// `admin.tls_cert` or `admin.tls_key`.
        setting: &'static str,
        /// What went wrong.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file has no certificate in it.
    #[error(
        "no certificate in {0} (set in admin.tls_cert): it must hold a PEM certificate chain, the server's certificate first"
    )]
    NoCertificate(PathBuf),
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("the admin TLS certificate {cert} and key {key} cannot be used together")]
    Config {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// A rustls server configuration (HTTP/1.1, TLS 1.2 and 1.3, the ring provider) serving
/// the certificate chain in `cert` with the private key in `key`, both PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    fn pem(
        what: &'static str,
        path: &Path,
        setting: &'static str,
    ) -> impl Fn(rustls::pki_types::pem::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Pem {
            what,
            path: path.clone(),
            setting,
            source,
        }
    }
    let chain = pem("the certificate chain", cert, "admin.tls_cert");
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(&chain)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(&chain)?;
    if certs.is_empty() {
        return Err(Error::NoCertificate(cert.to_path_buf()));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(pem("the private key", key, "admin.tls_key"))?;
    let refused = |source| Error::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(refused)?
            .with_no_client_auth()
            .with_single_cert(certs, private_key)
            .map_err(refused)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener that yields TLS streams: connections are accepted and their handshakes
/// run in the background; failed or slow handshakes are logged at debug level and
/// dropped.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: JoinHandle<()>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Accept TLS connections on `listener` with `config`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (done, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(%error, "admin API: accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if done.is_closed() {
                    break;
                }
                let acceptor = acceptor.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = done.send((stream, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "admin API: TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "admin API: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended (it never does while the listener lives).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
