//! `mqttkit iot create-thing NAME`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use aws_sdk_iot::error::SdkError;
use aws_sdk_iot::operation::delete_certificate::DeleteCertificateError;
use aws_sdk_iot::operation::delete_thing::DeleteThingError;
use aws_sdk_iot::operation::update_certificate::UpdateCertificateError;
use aws_sdk_iot::types::{AttributePayload, CertificateStatus};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde::Serialize;

use super::{
    cert_id, keys, policy, profile_name, sdk_error, thing_dir, validate_policy_name,
    validate_thing_name, Aws, CaChoice, CreateArgs, AMAZON_ROOT_CA1, POLICY_ATTRIBUTE,
};
use crate::fsutil::{StagedFiles, MODE_PUBLIC, MODE_SECRET};
use crate::mqtt::profile::{absolute, Profile};
use crate::mqtt::Transport;
use crate::output;
use crate::pki::KeyType;
use crate::schema::{Labels, Schema, SchemaSource};
use policy::PolicyTopics;

#[derive(Debug, Serialize)]
struct Created {
    thing: String,
    /// False when the thing already had a certificate and nothing was made.
    created: bool,
    certificates: Vec<String>,
    policy: Option<String>,
    policy_created: bool,
    endpoint: Option<String>,
    dir: Option<String>,
    profile: Option<String>,
}

/// What this run made, undone in reverse order if a later step fails.
enum Step {
    Thing(String),
    Cert(String),
    Policy(String),
    PolicyAttached { policy: String, cert_arn: String },
    ThingAttached { thing: String, cert_arn: String },
}

#[derive(Default)]
struct Undo(Vec<Step>);

impl Undo {
    async fn run(self, aws: &Aws) {
        for step in self.0.into_iter().rev() {
            let (what, result) = match &step {
                Step::Thing(name) => (
                    format!("delete thing {name}"),
                    delete_thing(aws, name).await,
                ),
                Step::Cert(id) => (
                    format!("delete certificate {id}"),
                    delete_certificate(aws, id).await,
                ),
                Step::Policy(p) => (
                    format!("delete policy {p}"),
                    aws.iot
                        .delete_policy()
                        .policy_name(p)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| sdk_error("iot:DeletePolicy", e)),
                ),
                Step::PolicyAttached { policy, cert_arn } => (
                    format!("detach policy {policy}"),
                    aws.iot
                        .detach_policy()
                        .policy_name(policy)
                        .target(cert_arn)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| sdk_error("iot:DetachPolicy", e)),
                ),
                Step::ThingAttached { thing, cert_arn } => (
                    format!("detach certificate from {thing}"),
                    aws.iot
                        .detach_thing_principal()
                        .thing_name(thing)
                        .principal(cert_arn)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| sdk_error("iot:DetachThingPrincipal", e)),
                ),
            };
            match result {
                Ok(()) => crate::note!("rolled back: {what}"),
                Err(e) => crate::note!("ROLLBACK FAILED: {what}: {e:#}; remove it by hand"),
            }
        }
    }
}

/// AWS IoT detaches asynchronously; deleting right after may conflict for a
/// moment. `conflict` picks the operation's conflict variant, so only that
/// error is retried.
pub(super) async fn retry<F, Fut, E, R>(op: &str, conflict: fn(&E) -> bool, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SdkError<E, R>>>,
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let mut delay = Duration::from_millis(200);
    for _ in 0..5 {
        match f().await {
            Ok(()) => return Ok(()),
            Err(SdkError::ServiceError(e)) if conflict(e.err()) => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(sdk_error(op, e)),
        }
    }
    f().await.map_err(|e| sdk_error(op, e))
}

/// Deletes a thing (retried while AWS still sees attachments going away).
pub(super) async fn delete_thing(aws: &Aws, name: &str) -> Result<()> {
    let conflict =
        |e: &DeleteThingError| matches!(e, DeleteThingError::VersionConflictException(_));
    retry("iot:DeleteThing", conflict, || async {
        aws.iot
            .delete_thing()
            .thing_name(name)
            .send()
            .await
            .map(|_| ())
    })
    .await
}

/// Deactivates and deletes one certificate.
/// A REVOKED certificate cannot change status (CertificateStateException)
/// but can be deleted as it is.
pub(super) async fn delete_certificate(aws: &Aws, id: &str) -> Result<()> {
    let deactivated = aws
        .iot
        .update_certificate()
        .certificate_id(id)
        .new_status(CertificateStatus::Inactive)
        .send()
        .await;
    match deactivated {
        Err(e)
            if !matches!(
                e.as_service_error(),
                Some(UpdateCertificateError::CertificateStateException(_))
            ) =>
        {
            return Err(sdk_error("iot:UpdateCertificate", e))
        }
        _ => {}
    }
    let conflict = |e: &DeleteCertificateError| {
        matches!(e, DeleteCertificateError::DeleteConflictException(_))
    };
    retry("iot:DeleteCertificate", conflict, || async {
        aws.iot
            .delete_certificate()
            .certificate_id(id)
            .send()
            .await
            .map(|_| ())
    })
    .await
}

pub(super) async fn create_thing(args: CreateArgs) -> Result<()> {
    // Everything that can be checked locally is, before any AWS call.
    let (policy_name, topics) = validate(&args)?;
    let name = args.name.clone();
    let dir = thing_dir(&args.out, &name);
    let files = ThingFiles::new(&dir);

    let aws = Aws::connect(&args.aws).await?;
    let pb = output::spinner("checking the account");
    let (account, partition) = aws.account().await?;

    let existing = aws.describe_thing(&name).await?;
    if existing.is_some() {
        let certs = certificates_of(&aws, &name).await?;
        if !certs.is_empty() {
            pb.finish_and_clear();
            return already_provisioned(&args, &aws, certs);
        }
    }
    let stale = files.existing();
    if !stale.is_empty() {
        bail!(
            "{} already exists from an earlier run but thing {name} has no certificate; remove {} (or run `mqttkit iot delete-thing {name} --purge`) and retry",
            stale[0].display(),
            dir.display()
        );
    }
    pb.finish_and_clear();
    let ctx = Ctx {
        aws: &aws,
        args: &args,
        account: &account,
        partition: &partition,
        policy_name: &policy_name,
        topics: &topics,
        files: &files,
        thing_exists: existing.is_some(),
    };
    confirm(&ctx, &dir)?;

    let mut undo = Undo::default();
    match provision(&ctx, &mut undo).await {
        Ok(created) => report(&args, created),
        Err(e) => {
            crate::note!("create-thing {name} failed: {e:#}; rolling back what this run created");
            undo.run(&aws).await;
            Err(e.context(format!("iot create-thing {name} (rolled back)")))
        }
    }
}

/// Checks the names, the key type and the schema; returns the policy name
/// and its topics.
fn validate(args: &CreateArgs) -> Result<(String, PolicyTopics)> {
    validate_thing_name(&args.name)?;
    if args.ca == CaChoice::Local {
        super::ca::local_ca(&args.out)?;
    }
    let policy_name = args
        .policy_name
        .clone()
        .unwrap_or_else(|| format!("mqttkit-{}", args.name));
    validate_policy_name(&policy_name)?;
    if !args.aws_generated_key && args.key_type == KeyType::Ed25519 {
        bail!("--key-type ed25519: AWS IoT Core does not accept Ed25519 certificates; use ecdsa-p256 (the default), ecdsa-p384 or rsa2048");
    }
    let topics = match &args.schema {
        None if !args.labels.is_empty() => {
            bail!("--label: only with --schema (mqttkit's own topics have no labels)")
        }
        None => PolicyTopics::builtin(&args.name),
        Some(path) => {
            let schema = Schema::load(&SchemaSource {
                schema: Some(path.clone()),
                ..Default::default()
            })?;
            let labels: Labels = args.labels.iter().cloned().collect();
            PolicyTopics::from_schema(&schema, &args.name, &labels)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
    };
    Ok((policy_name, topics))
}

/// The certificates attached to a thing.
async fn certificates_of(aws: &Aws, name: &str) -> Result<Vec<String>> {
    Ok(aws
        .thing_principals(name)
        .await?
        .into_iter()
        .filter(|p| p.contains(":cert/"))
        .collect())
}

/// The thing already has a certificate: says so and reports it, creating nothing.
fn already_provisioned(args: &CreateArgs, aws: &Aws, certs: Vec<String>) -> Result<()> {
    let name = &args.name;
    crate::note!(
        "thing {name} already exists in {} with certificate {}; nothing created (run `mqttkit iot delete-thing {name}` to start over)",
        aws.region,
        certs.iter().map(|c| cert_id(c)).collect::<Vec<_>>().join(", ")
    );
    report(
        args,
        Created {
            thing: name.clone(),
            created: false,
            certificates: certs,
            policy: None,
            policy_created: false,
            endpoint: None,
            dir: None,
            profile: None,
        },
    )
}

/// On a terminal without --yes, asks before creating anything.
fn confirm(c: &Ctx<'_>, dir: &std::path::Path) -> Result<()> {
    let args = c.args;
    if args.yes || !output::stdin_is_tty() || !output::stderr_is_tty() {
        return Ok(());
    }
    let name = &args.name;
    let what = format!(
        "Create in AWS account {}, region {}:\n  thing {name}{}\n  an ACTIVE certificate ({})\n  policy {} (connect as {name}, {})\nand write {}/ ?",
        c.account,
        c.aws.region,
        if c.thing_exists { " (exists; reused)" } else { "" },
        if args.aws_generated_key { "key generated by AWS".to_string() } else { format!("{} key generated here", args.key_type.label()) },
        c.policy_name,
        c.topics.describe(),
        dir.display()
    );
    ask(what, "nothing was created")
}

/// Asks `prompt` (default no); a no is the error "cancelled; `nothing`".
pub(super) fn ask(prompt: String, nothing: &str) -> Result<()> {
    let ok = dialoguer::Confirm::new()
        .with_prompt(prompt)
        .default(false)
        .interact()
        .context("confirmation prompt (pass --yes to skip it)")?;
    if !ok {
        bail!("cancelled; {nothing}");
    }
    Ok(())
}

struct Ctx<'a> {
    aws: &'a Aws,
    args: &'a CreateArgs,
    account: &'a str,
    partition: &'a str,
    policy_name: &'a str,
    topics: &'a PolicyTopics,
    files: &'a ThingFiles,
    thing_exists: bool,
}

struct ThingFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    pkcs8: std::path::PathBuf,
    ca: std::path::PathBuf,
}

impl ThingFiles {
    fn new(dir: &std::path::Path) -> Self {
        Self {
            cert: dir.join("cert.crt"),
            key: dir.join("private.key"),
            pkcs8: dir.join("private_pkcs8.key"),
            ca: dir.join("AmazonRootCA1.pem"),
        }
    }

    fn existing(&self) -> Vec<std::path::PathBuf> {
        [&self.cert, &self.key, &self.pkcs8, &self.ca]
            .into_iter()
            .filter(|p| p.exists())
            .cloned()
            .collect()
    }
}

async fn provision(c: &Ctx<'_>, undo: &mut Undo) -> Result<Created> {
    let aws = c.aws;
    let name = &c.args.name;
    let pb = output::spinner(format!("creating thing {name}"));
    upsert_thing(c, undo).await?;

    pb.set_message("creating the certificate");
    let cert = create_certificate(c, undo).await?;
    // Real safety check: a certificate for some other key is useless and would
    // leave an active credential whose private key someone else may hold.
    keys::check_cert_matches(&cert.pem, &cert.key)?;

    pb.set_message("creating the policy");
    let doc = policy::document(c.partition, &aws.region, c.account, name, c.topics);
    debug_assert!(policy::broad_grants(&doc).is_empty());
    let policy_created = ensure_policy(c, &doc, undo).await?;

    pb.set_message("attaching");
    attach(c, &cert.arn, undo).await?;
    let endpoint = data_endpoint(aws).await?;

    pb.set_message("writing files");
    let profile_path = write_files(c, &cert, &endpoint)?;
    pb.finish_and_clear();
    crate::note!(
        "thing {name} ready in {}: `mqttkit pub telemetry --profile {}`",
        aws.region,
        profile_name(name)
    );
    let f = c.files;
    Ok(Created {
        thing: name.clone(),
        created: true,
        certificates: vec![cert.arn],
        policy: Some(c.policy_name.to_string()),
        policy_created,
        endpoint: Some(endpoint),
        dir: Some(
            absolute(f.cert.parent().unwrap_or(&f.cert))
                .display()
                .to_string(),
        ),
        profile: Some(absolute(&profile_path).display().to_string()),
    })
}

/// Creates the thing, or tags the existing one with its policy.
async fn upsert_thing(c: &Ctx<'_>, undo: &mut Undo) -> Result<()> {
    let name = &c.args.name;
    let attrs = AttributePayload::builder()
        .attributes(POLICY_ATTRIBUTE, c.policy_name)
        .merge(true)
        .build();
    if c.thing_exists {
        c.aws
            .iot
            .update_thing()
            .thing_name(name)
            .attribute_payload(attrs)
            .send()
            .await
            .map_err(|e| sdk_error("iot:UpdateThing", e))?;
    } else {
        c.aws
            .iot
            .create_thing()
            .thing_name(name)
            .attribute_payload(attrs)
            .send()
            .await
            .map_err(|e| sdk_error("iot:CreateThing", e))?;
        undo.0.push(Step::Thing(name.clone()));
    }
    Ok(())
}

/// An ACTIVE certificate and its private key.
struct NewCert {
    arn: String,
    pem: String,
    key: KeyPair,
}

/// Creates the certificate: with a key from AWS (--aws-generated-key), or
/// from a CSR for a key generated here.
async fn create_certificate(c: &Ctx<'_>, undo: &mut Undo) -> Result<NewCert> {
    let iot = &c.aws.iot;
    if c.args.aws_generated_key {
        let r = iot
            .create_keys_and_certificate()
            .set_as_active(true)
            .send()
            .await
            .map_err(|e| sdk_error("iot:CreateKeysAndCertificate", e))?;
        let (arn, id, pem) =
            cert_fields(r.certificate_arn(), r.certificate_id(), r.certificate_pem())?;
        undo.0.push(Step::Cert(id));
        let private = r
            .key_pair()
            .and_then(|k| k.private_key())
            .context("iot:CreateKeysAndCertificate returned no private key")?;
        let key = keys::pkcs8_from_aws_pem(private)?;
        return Ok(NewCert { arn, pem, key });
    }
    if c.args.ca == CaChoice::Local {
        let r = super::local::register(c.aws, &c.args.out, &c.args.name, c.args.key_type).await?;
        undo.0.push(Step::Cert(r.id));
        let (pem, key) = (r.issued.cert_pem, r.issued.key);
        return Ok(NewCert {
            arn: r.arn,
            pem,
            key,
        });
    }
    let key = c.args.key_type.generate()?;
    let csr = csr_pem(&c.args.name, &key)?;
    let r = iot
        .create_certificate_from_csr()
        .certificate_signing_request(csr)
        .set_as_active(true)
        .send()
        .await
        .map_err(|e| sdk_error("iot:CreateCertificateFromCsr", e))?;
    let (arn, id, pem) = cert_fields(r.certificate_arn(), r.certificate_id(), r.certificate_pem())?;
    undo.0.push(Step::Cert(id));
    Ok(NewCert { arn, pem, key })
}

/// Attaches the policy to the certificate and the certificate to the thing.
async fn attach(c: &Ctx<'_>, cert_arn: &str, undo: &mut Undo) -> Result<()> {
    c.aws
        .iot
        .attach_policy()
        .policy_name(c.policy_name)
        .target(cert_arn)
        .send()
        .await
        .map_err(|e| sdk_error("iot:AttachPolicy", e))?;
    undo.0.push(Step::PolicyAttached {
        policy: c.policy_name.to_string(),
        cert_arn: cert_arn.to_string(),
    });
    c.aws
        .iot
        .attach_thing_principal()
        .thing_name(&c.args.name)
        .principal(cert_arn)
        .send()
        .await
        .map_err(|e| sdk_error("iot:AttachThingPrincipal", e))?;
    undo.0.push(Step::ThingAttached {
        thing: c.args.name.clone(),
        cert_arn: cert_arn.to_string(),
    });
    Ok(())
}

/// The account's ATS data endpoint, where devices connect.
async fn data_endpoint(aws: &Aws) -> Result<String> {
    Ok(aws
        .iot
        .describe_endpoint()
        .endpoint_type("iot:Data-ATS")
        .send()
        .await
        .map_err(|e| sdk_error("iot:DescribeEndpoint", e))?
        .endpoint_address()
        .context("iot:DescribeEndpoint returned no address")?
        .to_string())
}

/// Writes the certificate, the key (PEM and PKCS#8 DER) and the CA, then the
/// profile; returns the profile's path. If the profile cannot be saved, the
/// files go again (the AWS side is rolled back by the caller).
fn write_files(c: &Ctx<'_>, cert: &NewCert, endpoint: &str) -> Result<std::path::PathBuf> {
    let name = &c.args.name;
    let f = c.files;
    let mut staged = StagedFiles::new();
    staged.add(&f.cert, cert.pem.as_bytes(), MODE_PUBLIC);
    staged.add(&f.key, cert.key.serialize_pem().into_bytes(), MODE_SECRET);
    staged.add(&f.pkcs8, cert.key.serialize_der(), MODE_SECRET);
    staged.add(&f.ca, AMAZON_ROOT_CA1.as_bytes(), MODE_PUBLIC);
    staged.commit(false)?;
    let profile = Profile {
        host: endpoint.to_string(),
        port: 8883,
        transport: Transport::Tls,
        cafile: Some(absolute(&f.ca)),
        cert: Some(absolute(&f.cert)),
        key: Some(absolute(&f.key)),
        client_id: Some(name.clone()),
        device_id: Some(name.clone()),
        region: Some(c.aws.region.clone()),
        ..Profile::default()
    };
    profile
        .save(&c.args.out, &profile_name(name))
        .inspect_err(|_| {
            for p in [&f.cert, &f.key, &f.pkcs8, &f.ca] {
                let _ = std::fs::remove_file(p);
            }
        })
}

fn cert_fields(
    arn: Option<&str>,
    id: Option<&str>,
    pem: Option<&str>,
) -> Result<(String, String, String)> {
    match (arn, id, pem) {
        (Some(a), Some(i), Some(p)) => Ok((a.to_string(), i.to_string(), p.to_string())),
        _ => bail!("AWS IoT returned an incomplete certificate (missing ARN, id or PEM)"),
    }
}

fn csr_pem(name: &str, key: &KeyPair) -> Result<String> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    Ok(params
        .serialize_request(key)
        .context("building the certificate signing request")?
        .pem()?)
}

/// Creates the policy, or reuses it if it already has exactly this document.
/// Returns whether it was created.
async fn ensure_policy(c: &Ctx<'_>, doc: &serde_json::Value, undo: &mut Undo) -> Result<bool> {
    let aws = c.aws;
    match aws.iot.get_policy().policy_name(c.policy_name).send().await {
        Ok(p) => {
            if policy::same_document(p.policy_document().unwrap_or_default(), doc) {
                Ok(false)
            } else {
                bail!(
                    "--policy-name {}: a policy with that name exists with a different document; choose another --policy-name or delete that policy",
                    c.policy_name
                )
            }
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            aws.iot
                .create_policy()
                .policy_name(c.policy_name)
                .policy_document(doc.to_string())
                .send()
                .await
                .map_err(|e| sdk_error("iot:CreatePolicy", e))?;
            undo.0.push(Step::Policy(c.policy_name.to_string()));
            Ok(true)
        }
        Err(e) => Err(sdk_error("iot:GetPolicy", e)),
    }
}

fn report(args: &CreateArgs, created: Created) -> Result<()> {
    if args.json {
        return output::print_json(&created);
    }
    let mut text = format!("thing\t{}\n", created.thing);
    for c in &created.certificates {
        text.push_str(&format!("certificate\t{c}\n"));
    }
    if let Some(p) = &created.policy {
        text.push_str(&format!("policy\t{p}\n"));
    }
    if let Some(e) = &created.endpoint {
        text.push_str(&format!("endpoint\t{e}\n"));
    }
    if let Some(d) = &created.dir {
        text.push_str(&format!("dir\t{d}\n"));
    }
    if let Some(p) = &created.profile {
        text.push_str(&format!("profile\t{p}\n"));
    }
    output::print_stdout(&text)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use aws_sdk_iot::config::http::HttpResponse;
    use aws_sdk_iot::types::error::{DeleteConflictException, InvalidRequestException};
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    type Error = SdkError<DeleteCertificateError, HttpResponse>;

    /// A service error as the SDK builds it from AWS's answer.
    fn service(e: DeleteCertificateError, status: u16) -> Error {
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(e, raw)
    }

    fn conflict(e: &DeleteCertificateError) -> bool {
        matches!(e, DeleteCertificateError::DeleteConflictException(_))
    }

    #[tokio::test]
    async fn a_conflict_is_retried_until_it_clears() {
        let calls = AtomicU32::new(0);
        let r = retry("iot:DeleteCertificate", conflict, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                let e = DeleteConflictException::builder()
                    .message("attached")
                    .build();
                Err(service(
                    DeleteCertificateError::DeleteConflictException(e),
                    409,
                ))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn another_error_is_not_retried() {
        let calls = AtomicU32::new(0);
        let r = retry("iot:DeleteCertificate", conflict, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            let e = InvalidRequestException::builder().message("bad id").build();
            Err(service(
                DeleteCertificateError::InvalidRequestException(e),
                400,
            ))
        })
        .await;
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("iot:DeleteCertificate failed"), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
