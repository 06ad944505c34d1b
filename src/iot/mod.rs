//! `mqttkit iot`: AWS IoT Core things with aws-sdk-iot.
//!
//! `create-thing` makes a thing, a certificate for a key generated here (the
//! private key never leaves the machine), a least-privilege policy, and the
//! local files and `iot-NAME` profile that `pub`/`sub` use. `delete-thing`
//! undoes it; `list` shows things with their certificates. `register-ca`
//! registers the local CA so `create-thing --ca local` can register a
//! certificate it signs (one identity on mosquitto and AWS IoT; see `ca`,
//! `local`), `revoke-sync` carries `pki revoke` over to AWS IoT.
//!
//! Credentials, region and endpoint come from aws-config's normal chain
//! (env, profiles, SSO, `AWS_ENDPOINT_URL`).

mod ca;
mod create;
mod delete;
mod keys;
mod local;
mod policy;
mod revoke;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;

use crate::output;
use crate::pki::KeyType;

pub use keys::{check_cert_matches, pkcs1_to_pkcs8};

/// What to tell a user whose AWS credentials cannot be found.
pub use crate::aws::NO_CREDENTIALS_HELP;

/// The Amazon Root CA 1 that signs AWS IoT Core's ATS endpoints (public;
/// shipped in the binary so nothing is downloaded at run time).
pub const AMAZON_ROOT_CA1: &str = include_str!("../../assets/AmazonRootCA1.pem");

/// Thing attribute recording the policy mqttkit made for the thing, so
/// `delete-thing` removes exactly that one.
const POLICY_ATTRIBUTE: &str = "mqttkit_policy";

#[derive(Debug, Args)]
pub struct IotArgs {
    #[command(subcommand)]
    pub command: IotCommand,
}

#[derive(Debug, Subcommand)]
pub enum IotCommand {
    /// Create a thing, its certificate and least-privilege policy, and local files + profile iot-NAME.
    CreateThing(CreateArgs),
    /// Detach, deactivate and delete the thing's certificates, the thing and its mqttkit policy.
    DeleteThing(DeleteArgs),
    /// List things with their certificates' status and expiry.
    List(ListArgs),
    /// Register the local CA (OUT/certs/ca.crt) with AWS IoT, ACTIVE, for `create-thing --ca local`.
    RegisterCa(RegisterCaArgs),
    /// Deactivate and delete the CA `register-ca` registered (refused while certificates from it remain).
    DeregisterCa(DeregisterCaArgs),
    /// Mark REVOKED in AWS IoT the certificates from the registered CA that `pki revoke` revoked.
    RevokeSync(RevokeSyncArgs),
}

#[derive(Debug, Args)]
pub struct RevokeSyncArgs {
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Print the revoked certificates as one JSON array on stdout.
    #[arg(long)]
    pub json: bool,
}

/// How AWS IoT holds a registered CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaMode {
    /// Multi-account: no verification certificate; devices must send SNI (mqttkit does).
    #[default]
    SniOnly,
    /// Single-account: proves the CA key with a verification certificate for the registration code.
    Default,
}

/// Who signs the device certificate of `create-thing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CaChoice {
    /// AWS IoT's CA signs a CSR for a key made here.
    #[default]
    Aws,
    /// The local CA (OUT/certs) signs it: the same files work on mosquitto.
    Local,
}

#[derive(Debug, Args)]
pub struct RegisterCaArgs {
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// sni-only (multi-account, no verification certificate) or default (verified).
    #[arg(long, value_enum, default_value_t)]
    pub mode: CaMode,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeregisterCaArgs {
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AwsArgs {
    /// AWS region (default: AWS_REGION or the profile's region).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Thing name (also the MQTT client id and device id): [a-zA-Z0-9:_-], 1 to 128 characters.
    pub name: String,
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Policy name (default: mqttkit-NAME).
    #[arg(long, value_name = "P")]
    pub policy_name: Option<String>,
    /// Type of the locally generated key (AWS IoT accepts ECDSA and RSA, not Ed25519).
    #[arg(long, value_enum, default_value_t)]
    pub key_type: KeyType,
    /// Name the policy's topics from this schema's telemetry and command
    /// topics ({device} = NAME) instead of devices/NAME/...
    #[arg(long, value_name = "FILE", env = "MQTTKIT_SCHEMA")]
    pub schema: Option<PathBuf>,
    /// A value for a {label} of the schema's topics (repeatable): the policy
    /// names exact topics, e.g. --label site=osaka.
    #[arg(long = "label", value_name = "NAME=VALUE", value_parser = crate::schema::args::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Let AWS generate the key (CreateKeysAndCertificate) instead of sending a CSR.
    #[arg(long, conflicts_with = "key_type")]
    pub aws_generated_key: bool,
    /// Who signs the certificate: aws, or local (OUT/certs' CA; reuses
    /// OUT/certs/NAME.crt if it exists, registered with RegisterCertificate).
    #[arg(
        long,
        value_enum,
        default_value_t,
        conflicts_with = "aws_generated_key"
    )]
    pub ca: CaChoice,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Thing name.
    pub name: String,
    /// The global `--out DIR` (declared once, in cli.rs).
    #[arg(from_global)]
    pub out: PathBuf,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Also remove OUT/iot/NAME/ and the iot-NAME profile.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
    /// Print the things as one JSON array on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: IotArgs) -> Result<()> {
    match args.command {
        IotCommand::CreateThing(a) => create::create_thing(a).await,
        IotCommand::DeleteThing(a) => delete::delete_thing(a).await,
        IotCommand::List(a) => list(a).await,
        IotCommand::RegisterCa(a) => ca::register_ca(a).await,
        IotCommand::DeregisterCa(a) => ca::deregister_ca(a).await,
        IotCommand::RevokeSync(a) => revoke::revoke_sync(a).await,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("thing name '{0}': must be 1 to 128 characters of a-z A-Z 0-9 : _ - (AWS IoT thing-name rules); choose another NAME")]
    Thing(String),
    #[error("--policy-name '{0}': must be 1 to 128 characters of a-z A-Z 0-9 _ . , @ - ; choose another name")]
    Policy(String),
}

/// AWS IoT thing-name rules: `[a-zA-Z0-9:_-]{1,128}`.
pub fn validate_thing_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Thing(name.to_string()))
    }
}

/// Policy names (`[\w+=,.@-]+`), narrowed to what a thing attribute can hold.
pub fn validate_policy_name(name: &str) -> Result<(), NameError> {
    let ok = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b',' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Policy(name.to_string()))
    }
}

/// Where `create-thing` writes a thing's files.
pub fn thing_dir(out: &Path, name: &str) -> PathBuf {
    out.join("iot").join(name)
}

pub fn profile_name(name: &str) -> String {
    format!("iot-{name}")
}

/// An IoT client plus the region and account it acts in.
pub(crate) struct Aws {
    pub iot: aws_sdk_iot::Client,
    pub sts: aws_sdk_sts::Client,
    pub region: String,
}

impl Aws {
    /// Loads the config and checks that credentials exist, before any call.
    pub async fn connect(args: &AwsArgs) -> Result<Self> {
        let config = crate::aws::load_config(args.region.as_deref()).await;
        let region = crate::aws::region(&config, "iot")?;
        crate::aws::credentials(&config).await?;
        Ok(Self {
            iot: aws_sdk_iot::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
            region,
        })
    }

    /// The account id and partition of the credentials.
    pub async fn account(&self) -> Result<(String, String)> {
        let me = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| sdk_error("sts:GetCallerIdentity", e))?;
        let account = me.account().unwrap_or_default().to_string();
        let partition = me
            .arn()
            .and_then(|a| a.split(':').nth(1))
            .unwrap_or("aws")
            .to_string();
        Ok((account, partition))
    }

    /// The certificate ARNs attached to a thing.
    pub async fn thing_principals(&self, name: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .iot
                .list_thing_principals()
                .thing_name(name)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| sdk_error("iot:ListThingPrincipals", e))?;
            out.extend(page.principals().iter().cloned());
            token = page.next_token().map(String::from);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// The thing's attributes, or None if there is no such thing.
    pub async fn describe_thing(
        &self,
        name: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>> {
        match self.iot.describe_thing().thing_name(name).send().await {
            Ok(t) => Ok(Some(t.attributes().cloned().unwrap_or_default())),
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception());
                if not_found {
                    Ok(None)
                } else {
                    Err(sdk_error("iot:DescribeThing", e))
                }
            }
        }
    }
}

/// A one-line error for a failed AWS call, with the service's own message.
pub(crate) fn sdk_error<E, R>(op: &str, e: aws_sdk_iot::error::SdkError<E, R>) -> anyhow::Error
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if credentials_missing(&e) {
        return anyhow::anyhow!("{op}: {NO_CREDENTIALS_HELP}");
    }
    if matches!(
        e,
        aws_sdk_iot::error::SdkError::DispatchFailure(_)
            | aws_sdk_iot::error::SdkError::TimeoutError(_)
    ) {
        // Network trouble: name the endpoint and the root cause, not the SDK's layers.
        let mut root: &dyn std::error::Error = &e;
        while let Some(next) = root.source() {
            root = next;
        }
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .unwrap_or_else(|_| "the AWS IoT endpoint".to_string());
        return anyhow::anyhow!(
            "{op}: cannot reach {endpoint} ({root}); check the network, AWS_REGION and AWS_ENDPOINT_URL"
        );
    }
    let text = aws_sdk_iot::error::DisplayErrorContext(&e).to_string();
    anyhow::anyhow!("{op} failed: {text}")
}

/// The SDK could not load credentials: a `CredentialsError` somewhere in
/// the error's sources (the identity resolver's error, boxed by the SDK).
fn credentials_missing(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut layer = Some(e);
    while let Some(err) = layer {
        if err
            .downcast_ref::<aws_credential_types::provider::error::CredentialsError>()
            .is_some()
        {
            return true;
        }
        layer = err.source();
    }
    false
}

/// The certificate id at the end of a certificate ARN.
pub(crate) fn cert_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

#[derive(Debug, Serialize)]
struct ThingRow {
    thing: String,
    certificates: Vec<CertRow>,
}

#[derive(Debug, Serialize)]
struct CertRow {
    id: String,
    arn: String,
    status: String,
    not_after: Option<String>,
}

async fn list(args: ListArgs) -> Result<()> {
    let aws = Aws::connect(&args.aws).await?;
    let pb = output::spinner("listing things");
    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = aws
            .iot
            .list_things()
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| sdk_error("iot:ListThings", e))?;
        names.extend(
            page.things()
                .iter()
                .filter_map(|t| t.thing_name().map(String::from)),
        );
        token = page.next_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        let mut certs = Vec::new();
        for arn in aws.thing_principals(&name).await? {
            if !arn.contains(":cert/") {
                continue;
            }
            let d = aws
                .iot
                .describe_certificate()
                .certificate_id(cert_id(&arn))
                .send()
                .await
                .map_err(|e| sdk_error("iot:DescribeCertificate", e))?;
            let desc = d.certificate_description();
            certs.push(CertRow {
                id: cert_id(&arn).to_string(),
                arn: arn.clone(),
                status: desc
                    .and_then(|d| d.status())
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "UNKNOWN".into()),
                not_after: desc
                    .and_then(|d| d.validity())
                    .and_then(|v| v.not_after())
                    .and_then(|t| {
                        t.fmt(aws_sdk_iot::primitives::DateTimeFormat::DateTime)
                            .ok()
                    }),
            });
        }
        rows.push(ThingRow {
            thing: name,
            certificates: certs,
        });
    }
    pb.finish_and_clear();
    if args.json {
        return output::print_json(&rows);
    }
    let mut table = Vec::new();
    for r in &rows {
        if r.certificates.is_empty() {
            table.push(vec![r.thing.clone(), "-".into(), "-".into(), "-".into()]);
        }
        for c in &r.certificates {
            table.push(vec![
                r.thing.clone(),
                c.id.chars().take(12).collect(),
                c.status.clone(),
                c.not_after.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    let text = output::table(
        &["THING", "CERTIFICATE", "STATUS", "EXPIRES"],
        &[false; 4],
        table,
    );
    output::print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thing_names() {
        validate_thing_name("dev-1:a_b").unwrap();
        validate_thing_name(&"a".repeat(128)).unwrap();
        for bad in ["", "a b", "a/b", "ü", &"a".repeat(129), "a#"] {
            let e = validate_thing_name(bad).unwrap_err().to_string();
            assert!(e.contains("AWS IoT thing-name rules"), "{e}");
        }
        validate_policy_name("mqttkit-dev-1").unwrap();
        assert!(validate_policy_name("a=b").is_err());
    }

    #[test]
    fn embedded_root_ca_is_amazon_root_ca_1() {
        let (_, pem) = x509_parser::pem::parse_x509_pem(AMAZON_ROOT_CA1.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "C=US, O=Amazon, CN=Amazon Root CA 1"
        );
        use sha2::Digest;
        let fp = sha2::Sha256::digest(&pem.contents);
        let hex: Vec<String> = fp.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(
            hex.join(":"),
            "8E:CD:E6:88:4F:3D:87:B1:12:5B:A3:1A:C3:FC:B1:3D:70:16:DE:7F:57:CC:90:4F:E1:CB:97:C6:AE:98:19:6E"
        );
        assert_eq!(cert_id("arn:aws:iot:us-east-1:1:cert/abc"), "abc");
    }
}
