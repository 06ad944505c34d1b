//! The one place that loads AWS configuration (region, credentials, an
//! `AWS_ENDPOINT_URL` override), for `iot`, the SigV4 WebSocket transport
//! and the Timestream sink, so all three read the same chain and explain a
//! missing credential the same way.

use anyhow::{bail, Result};
use aws_config::SdkConfig;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::Credentials;

pub const NO_CREDENTIALS_HELP: &str = "no AWS credentials found: set AWS_PROFILE to a profile in ~/.aws/config (or run `aws configure` / `aws sso login`), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary credentials)";

/// The standard chain (env, profile, SSO, IMDS...), with `region` first
/// when a flag gave one.
pub async fn load_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_string()));
    }
    loader.load().await
}

/// The configured region, or an error saying where to set one.
pub fn region(config: &SdkConfig, what: &str) -> Result<String> {
    match config.region() {
        Some(r) => Ok(r.to_string()),
        None => bail!(
            "{what}: no AWS region: pass --region REGION where the command has it, or set AWS_REGION (or `region` in your AWS profile)"
        ),
    }
}

/// Resolves credentials now, so a missing one is an error before any call.
pub async fn credentials(config: &SdkConfig) -> Result<Credentials> {
    let Some(provider) = config.credentials_provider() else {
        bail!("{NO_CREDENTIALS_HELP}");
    };
    provider
        .provide_credentials()
        .await
        .map_err(|e| anyhow::anyhow!("{NO_CREDENTIALS_HELP} ({e})"))
}
