//! `mqttkit iot delete-thing NAME`: detach, deactivate and delete the thing's
//! certificates, delete the thing and the policy mqttkit created for it.

use anyhow::{bail, Context, Result};
use aws_sdk_iot::operation::delete_policy::DeletePolicyError;

use super::create::{delete_certificate, retry};
use super::{
    cert_id, profile_name, sdk_error, thing_dir, validate_thing_name, Aws, DeleteArgs,
    POLICY_ATTRIBUTE,
};
use crate::output;

pub(super) async fn delete_thing(args: DeleteArgs) -> Result<()> {
    validate_thing_name(&args.name)?;
    let name = &args.name;
    let aws = Aws::connect(&args.aws).await?;
    let pb = output::spinner(format!("looking up thing {name}"));
    let Some(attrs) = aws.describe_thing(name).await? else {
        pb.finish_and_clear();
        crate::note!(
            "no thing {name} in {}; nothing to delete in AWS",
            aws.region
        );
        return purge(&args);
    };
    let certs: Vec<String> = aws
        .thing_principals(name)
        .await?
        .into_iter()
        .filter(|p| p.contains(":cert/"))
        .collect();
    let policy = attrs.get(POLICY_ATTRIBUTE).cloned();
    pb.finish_and_clear();

    if !args.yes {
        if !(output::stdin_is_tty() && output::stderr_is_tty()) {
            bail!("iot delete-thing {name}: not a terminal, so no confirmation can be asked; pass --yes to delete");
        }
        let prompt = format!(
            "Delete in {}: thing {name}, {} certificate(s){}?",
            aws.region,
            certs.len(),
            policy
                .as_ref()
                .map(|p| format!(", policy {p}"))
                .unwrap_or_default()
        );
        super::create::ask(prompt, "nothing was deleted")?;
    }

    let pb = output::spinner(format!("deleting thing {name}"));
    for arn in &certs {
        aws.iot
            .detach_thing_principal()
            .thing_name(name)
            .principal(arn)
            .send()
            .await
            .map_err(|e| sdk_error("iot:DetachThingPrincipal", e))?;
        // A certificate another thing still uses is left alone.
        let others = aws
            .iot
            .list_principal_things()
            .principal(arn)
            .send()
            .await
            .map_err(|e| sdk_error("iot:ListPrincipalThings", e))?;
        if !others.things().is_empty() {
            crate::note!(
                "certificate {} is still attached to {}; keeping it",
                cert_id(arn),
                others.things().join(", ")
            );
            continue;
        }
        let attached = aws
            .iot
            .list_attached_policies()
            .target(arn)
            .send()
            .await
            .map_err(|e| sdk_error("iot:ListAttachedPolicies", e))?;
        for p in attached.policies() {
            if let Some(pname) = p.policy_name() {
                aws.iot
                    .detach_policy()
                    .policy_name(pname)
                    .target(arn)
                    .send()
                    .await
                    .map_err(|e| sdk_error("iot:DetachPolicy", e))?;
            }
        }
        delete_certificate(&aws, cert_id(arn)).await?;
        crate::note!("deleted certificate {}", cert_id(arn));
    }
    super::create::delete_thing(&aws, name).await?;
    crate::note!("deleted thing {name}");
    if let Some(p) = policy {
        delete_policy_if_unused(&aws, &p).await?;
    }
    pb.finish_and_clear();
    purge(&args)
}

async fn delete_policy_if_unused(aws: &Aws, policy: &str) -> Result<()> {
    let targets = match aws
        .iot
        .list_targets_for_policy()
        .policy_name(policy)
        .send()
        .await
    {
        Ok(t) => t,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            return Ok(());
        }
        Err(e) => return Err(sdk_error("iot:ListTargetsForPolicy", e)),
    };
    if !targets.targets().is_empty() {
        crate::note!(
            "policy {policy} is still attached to {} other certificate(s); keeping it",
            targets.targets().len()
        );
        return Ok(());
    }
    let conflict =
        |e: &DeletePolicyError| matches!(e, DeletePolicyError::DeleteConflictException(_));
    retry("iot:DeletePolicy", conflict, || async {
        aws.iot
            .delete_policy()
            .policy_name(policy)
            .send()
            .await
            .map(|_| ())
    })
    .await?;
    crate::note!("deleted policy {policy}");
    Ok(())
}

/// With --purge, removes OUT/iot/NAME/ and the iot-NAME profile.
fn purge(args: &DeleteArgs) -> Result<()> {
    if !args.purge {
        return Ok(());
    }
    let dir = thing_dir(&args.out, &args.name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        crate::note!("removed {}", dir.display());
    }
    let profile = crate::mqtt::profile::profile_path(&args.out, &profile_name(&args.name));
    if profile.exists() {
        std::fs::remove_file(&profile)
            .with_context(|| format!("removing {}", profile.display()))?;
        crate::note!("removed {}", profile.display());
    }
    Ok(())
}
