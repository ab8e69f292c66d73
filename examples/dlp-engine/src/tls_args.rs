//! The TLS options the client examples share (`--ca`, `--pin-cert`, `--client-cert`,
//! `--client-key`) and the `ClientTls` they make, so the flags read the same everywhere.

use std::path::PathBuf;

use icap::tls::{ClientTls, TlsConfigError};

/// TLS for `icaps://` servers, flattened into an example's arguments.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA certificate file (PEM) to trust for icaps:// (default: the system roots).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Server certificate (PEM) to pin instead of checking a CA.
    #[arg(long = "pin-cert", value_name = "FILE")]
    pub pin_cert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require one.
    #[arg(long = "client-cert", value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "client-key", value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The client TLS configuration these options describe; a file that cannot be used is
    /// named in the error.
    pub fn client_tls(&self) -> Result<ClientTls, TlsConfigError> {
        let mut tls = ClientTls::default();
        if let Some(ca) = &self.ca {
            tls = tls.with_ca_file(ca)?;
        }
        if let Some(pin) = &self.pin_cert {
            tls = tls.with_pinned_cert_file(pin)?;
        }
        if let (Some(c), Some(k)) = (&self.client_cert, &self.client_key) {
            tls = tls.with_client_cert_files(c, k)?;
        }
        Ok(tls)
    }
}
