//! SigV4 presigned URLs for MQTT over WebSocket to AWS IoT Core.
//!
//! AWS IoT authenticates a WebSocket connection by a SigV4-presigned
//! `GET /mqtt` for the service `iotdevicegateway`. Unlike most services, the
//! session token of temporary credentials (Cognito, STS) must NOT be part of
//! the signed canonical query: it is appended after signing. The signing itself
//! is done by the maintained `aws-sigv4` crate; this module only fixes the
//! parameters and builds the query. The test in `tests/transport.rs` checks the
//! result against botocore's independent implementation.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, SessionTokenMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;

/// The SigV4 service name of the AWS IoT data plane.
pub const SERVICE: &str = "iotdevicegateway";
/// The WebSocket path AWS IoT serves MQTT on.
pub const PATH: &str = "/mqtt";
/// How long a presigned URL may be used to open a connection (AWS's examples use a day).
pub const EXPIRES: Duration = Duration::from_secs(86_400);

#[derive(Debug, thiserror::Error)]
pub enum SigV4Error {
    #[error("SigV4 signing for {host}: {reason}")]
    Sign { host: String, reason: String },
}

/// The presigned query string (without `?`) for `GET https://HOST/mqtt`.
///
/// `host` is exactly the `Host` header the client sends (with `:PORT` when it
/// is not 443).
pub fn presign_query(
    creds: &Credentials,
    host: &str,
    region: &str,
    time: SystemTime,
) -> Result<String, SigV4Error> {
    let err = |reason: String| SigV4Error::Sign {
        host: host.to_string(),
        reason,
    };
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(EXPIRES);
    // AWS IoT wants the token outside the signature, added to the URL afterwards.
    settings.session_token_mode = SessionTokenMode::Exclude;
    let identity = creds.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| err(e.to_string()))?
        .into();
    let url = format!("https://{host}{PATH}");
    let request = SignableRequest::new(
        "GET",
        url,
        std::iter::once(("host", host)),
        SignableBody::Bytes(b""),
    )
    .map_err(|e| err(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| err(e.to_string()))?
        .into_parts();
    let (_headers, query) = instructions.into_parts();
    Ok(query
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
        .collect::<Vec<_>>()
        .join("&"))
}

/// The full `wss://` URL: `wss://HOST/mqtt?<presigned query>`.
pub fn presigned_url(
    creds: &Credentials,
    host: &str,
    region: &str,
    time: SystemTime,
) -> Result<String, SigV4Error> {
    Ok(format!(
        "wss://{host}{PATH}?{}",
        presign_query(creds, host, region, time)?
    ))
}

/// SigV4's URI encoding: everything but unreserved characters is `%XX`.
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The region an AWS IoT data endpoint is in: `xxx-ats.iot.REGION.amazonaws.com`.
pub fn region_of_endpoint(host: &str) -> Option<&str> {
    let rest = host.split_once(".iot.")?.1;
    let (region, suffix) = rest.split_once('.')?;
    (suffix.starts_with("amazonaws.com") && !region.is_empty()).then_some(region)
}

/// Loads credentials from the normal AWS chain (env, profile, SSO, IMDS...).
pub async fn load_credentials() -> anyhow::Result<Credentials> {
    crate::aws::credentials(&crate::aws::load_config(None).await).await
}

/// rumqttc request modifier: rewrites the WebSocket upgrade request's URL to
/// a presigned one. It cannot fail the connection itself, so a missing
/// credential is logged (with how to fix it) and the request goes unsigned,
/// which AWS then refuses with HTTP 403.
pub async fn sign_request(mut req: http::Request<()>, region: String) -> http::Request<()> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some(host) = host else {
        tracing::error!("--transport wss: request has no host to sign");
        return req;
    };
    let signed = async {
        let creds = load_credentials().await?;
        let url = presigned_url(&creds, &host, &region, SystemTime::now())?;
        let uri: http::Uri = url.parse()?;
        anyhow::Ok(uri)
    }
    .await;
    match signed {
        Ok(uri) => {
            tracing::debug!("wss: SigV4-presigned the connection to {host} for region {region}");
            *req.uri_mut() = uri;
        }
        Err(e) => tracing::error!("--transport wss: not signing the connection: {e:#}"),
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_and_region() {
        assert_eq!(uri_encode("AK/2015:x y+="), "AK%2F2015%3Ax%20y%2B%3D");
        assert_eq!(
            region_of_endpoint("abc-ats.iot.eu-west-1.amazonaws.com"),
            Some("eu-west-1")
        );
        assert_eq!(region_of_endpoint("localhost"), None);
    }

    #[test]
    fn token_is_outside_the_signature() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let plain = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let temp = Credentials::new("AKIDEXAMPLE", "secret", Some("tok/en".into()), None, "t");
        let a = presign_query(&plain, "h.example", "us-east-1", t).unwrap();
        let b = presign_query(&temp, "h.example", "us-east-1", t).unwrap();
        // Same signature; the token is only appended.
        assert_eq!(format!("{a}&X-Amz-Security-Token=tok%2Fen"), b);
        assert!(a.contains("X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fiotdevicegateway%2Faws4_request"), "{a}");
    }
}
