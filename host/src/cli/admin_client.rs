//! The operator commands that talk to a running daemon's admin API: `status`,
//! `explain`, `diff`, `reconcile`, `approve`, `abort`, `audit`.

use clap::Args;
use serde_json::Value;

use super::CliError;

/// Where the daemon's admin API is, and the token for mutating commands.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// Base URL of the daemon's admin API.
    #[arg(
        long,
        env = "SETPOINT_ENDPOINT",
        default_value = "http://127.0.0.1:9187",
        global = true
    )]
    pub endpoint: String,
    /// Bearer token for mutating commands (the daemon's `admin.token`).
    #[arg(
        long,
        env = "SETPOINT_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// PEM file with the certificate (or its CA) that the daemon's HTTPS admin API
    /// presents (`admin.tls_cert`), for a self-signed or private-CA certificate. The
    /// system's trusted roots are used as well.
    #[arg(long, env = "SETPOINT_ADMIN_CA_CERT", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
}

/// An admin API client.
#[derive(Debug)]
pub(super) struct Admin {
    args: AdminArgs,
    http: reqwest::Client,
}

impl Admin {
    pub(super) fn new(args: AdminArgs) -> Result<Self, CliError> {
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read --ca-cert {}: {e}; give the PEM file of the daemon's admin.tls_cert (or of its CA)",
                    path.display()
                )
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    format!(
                        "--ca-cert {} holds no PEM certificate (a `-----BEGIN CERTIFICATE-----` block); give the daemon's admin.tls_cert or its CA",
                        path.display()
                    )
                })?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        let http = http
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Admin { args, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.args.endpoint.trim_end_matches('/'))
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, CliError> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        answer(path, response).await
    }

    pub(super) async fn post(&self, path: &str) -> Result<Value, CliError> {
        self.post_json(path, &Value::Null).await
    }

    pub(super) async fn post_json(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let mut request = self.http.post(self.url(path));
        if !body.is_null() {
            request = request.json(body);
        }
        if let Some(token) = &self.args.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        answer(path, response).await
    }

    fn unreachable(&self, e: reqwest::Error) -> CliError {
        // reqwest's own message is "error sending request"; the cause (refused, a
        // certificate not trusted, …) is further down the chain.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            cause = format!("{cause}: {inner}");
            source = inner.source();
        }
        let endpoint = &self.args.endpoint;
        let hint = if cause.contains("certificate") || cause.contains("UnknownIssuer") {
            "the daemon's certificate is not trusted: pass its admin.tls_cert (or its CA) with --ca-cert or SETPOINT_ADMIN_CA_CERT"
        } else if endpoint.starts_with("http://")
            && (cause.contains("invalid HTTP version") || cause.contains("connection closed"))
        {
            // A TLS listener answers a plain request with an alert, not HTTP.
            "if the daemon serves HTTPS (admin.tls_cert is set), use an https:// endpoint"
        } else {
            "is `setpoint run` running? set --endpoint or SETPOINT_ENDPOINT"
        };
        format!("cannot reach the setpoint admin API at {endpoint} ({cause}); {hint}").into()
    }

    pub(super) fn json(&self) -> bool {
        self.args.json
    }
}

async fn answer(path: &str, response: reqwest::Response) -> Result<Value, CliError> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(body)
    } else {
        let message = body["error"].as_str().unwrap_or("no details");
        Err(format!("{path}: {status}: {message}").into())
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(super) async fn status(admin: &Admin, id: Option<String>) -> Result<(), CliError> {
    let Some(id) = id else {
        let rows = admin.get("/v1/instances").await?;
        if admin.json() {
            print_json(&rows);
            return Ok(());
        }
        println!(
            "{:<38} {:<20} {:<22} {:<8} CONDITION",
            "ID", "NAME", "STATUS", "SYNCED"
        );
        for row in rows.as_array().into_iter().flatten() {
            let conditions = row["conditions"].as_array().cloned().unwrap_or_default();
            let synced = conditions.iter().find(|c| c["type_"] == "Synced");
            let worst = conditions
                .iter()
                .find(|c| c["type_"] != "Synced" && c["status"] == true)
                .or(synced);
            println!(
                "{:<38} {:<20} {:<22} {:<8} {}",
                row["id"].as_str().unwrap_or(""),
                row["name"].as_str().unwrap_or(""),
                row["status"].as_str().unwrap_or(""),
                synced
                    .map(|c| if c["status"] == true { "yes" } else { "no" })
                    .unwrap_or("-"),
                worst
                    .map(|c| format!(
                        "{}: {}",
                        c["reason"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    ))
                    .unwrap_or_default()
            );
        }
        return Ok(());
    };
    let v = admin.get(&format!("/v1/instances/{id}")).await?;
    if admin.json() {
        print_json(&v);
        return Ok(());
    }
    let i = &v["instance"];
    println!("instance {} ({})", id, i["name"].as_str().unwrap_or(""));
    println!("  status:   {}", i["status"].as_str().unwrap_or(""));
    println!("  platform: {}", i["platformType"].as_str().unwrap_or(""));
    for c in v["conditions"].as_array().into_iter().flatten() {
        println!(
            "  {:<17} {:<5} {}: {}",
            c["type_"].as_str().unwrap_or(""),
            c["status"],
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        );
    }
    if let Some(p) = v["progress"].as_object() {
        println!(
            "  rollout:  {} revision {} ({}, {} step calls)",
            p["strategy"].as_str().unwrap_or(""),
            short(p["revision"].as_str().unwrap_or("")),
            p["phase"].as_str().unwrap_or(""),
            p["steps"]
        );
        if let Some(summary) = p["summary"].as_str() {
            println!("  progress: {summary}");
        }
        if let Some(weights) = p["weights"].as_array() {
            let text: Vec<String> = weights
                .iter()
                .map(|w| format!("{} {}", w["instanceId"].as_str().unwrap_or(""), w["weight"]))
                .collect();
            println!("  traffic:  endpoint {id}: {}", text.join(", "));
        }
        if let Some(a) = p["status"]["analysis"].as_object() {
            let figure = |k: &str| a.get(k).map(Value::to_string).unwrap_or("-".into());
            if let Some(query) = a.get("query").and_then(Value::as_str) {
                println!(
                    "  analysis: query {query} = {} (min {}, max {}), {} of {} consecutive failures",
                    figure("value"),
                    figure("min"),
                    figure("max"),
                    figure("consecutive_failures"),
                    figure("failure_limit")
                );
            } else {
                println!(
                    "  analysis: {} requests, {} errors, error rate {} (max {}), {} of {} consecutive failures",
                    figure("requests"),
                    figure("errors"),
                    figure("error_rate"),
                    figure("max_error_rate"),
                    figure("consecutive_failures"),
                    figure("failure_limit")
                );
            }
        }
        if let Some(waiting) = p["status"]["waiting_for"].as_str() {
            println!("  waits:    {waiting}");
        }
        if let Some(promote) = p["promote"].as_object() {
            println!(
                "  promote:  {}requested by {}",
                if promote["full"] == true {
                    "full, "
                } else {
                    ""
                },
                promote["by"].as_str().unwrap_or("")
            );
        }
    }
    println!("  backups:  {}", v["backups"]);
    if let Some(a) = v["approval"].as_object() {
        println!(
            "  approval: revision {} {}: {}",
            short(a["digest"].as_str().unwrap_or("")),
            if a["approved_at"].is_null() {
                "waits"
            } else {
                "approved"
            },
            a["message"].as_str().unwrap_or("")
        );
    }
    if let Some(g) = v["givenUp"].as_object() {
        println!(
            "  given up: revision {}: {} (`setpoint retry {id}` tries it again)",
            short(g["digest"].as_str().unwrap_or("")),
            g["reason"].as_str().unwrap_or("")
        );
    }
    if let Some(a) = v["abortRequested"].as_object() {
        println!(
            "  abort:    requested by {} for revision {}",
            a["requested_by"].as_str().unwrap_or(""),
            short(a["digest"].as_str().unwrap_or(""))
        );
    }
    if let Some(d) = v["lastDecision"].as_object() {
        println!(
            "  decided:  {} (revision {})",
            d["decision"]["decision"].as_str().unwrap_or(""),
            short(d["desired_digest"].as_str().unwrap_or(""))
        );
    }
    Ok(())
}

/// `status ID --watch`: redraw every second while the rollout moves; return once the
/// instance has no rollout (after drawing its final state).
/// `setpoint approve --group NAME` / `setpoint abort --group NAME`.
pub(super) async fn group_action(admin: &Admin, name: &str, action: &str) -> Result<(), CliError> {
    let v = admin.post(&format!("/v1/groups/{name}/{action}")).await?;
    if admin.json() {
        print_json(&v);
    } else {
        let keys = v["approved"].as_array().or(v["aborting"].as_array());
        for key in keys.into_iter().flatten() {
            println!(
                "{} {}",
                if action == "approve" {
                    "approved"
                } else {
                    "aborting"
                },
                key.as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `setpoint status --group app=orders`: each group of that name, its rollout and members.
pub(super) async fn group_status(admin: &Admin, name: &str) -> Result<(), CliError> {
    let v = admin.get(&format!("/v1/groups/{name}")).await?;
    if admin.json() {
        print_json(&v);
        return Ok(());
    }
    for g in v["groups"].as_array().into_iter().flatten() {
        let members = g["members"].as_array().cloned().unwrap_or_default();
        let converged = members.iter().filter(|m| m["converged"] == true).count();
        println!(
            "group {} (rule {}): {converged} of {} members converged",
            g["group"].as_str().unwrap_or(""),
            g["rule"].as_str().unwrap_or(""),
            members.len()
        );
        match g["rollout"].as_object() {
            Some(r) => println!(
                "  rollout:  {} step {} ({})",
                r["strategy"].as_str().unwrap_or(""),
                r["step"],
                r["phase"].as_str().unwrap_or("")
            ),
            None => println!("  rollout:  none"),
        }
        let status = &g["status"];
        if status.is_object() {
            println!("  progress: {}", crate::controller::describe_status(status));
        }
        // What the strategy reports per member, where it does; else converged or not.
        let in_list = |key: &str, id: &str| {
            status[key]
                .as_array()
                .is_some_and(|l| l.iter().any(|m| m == id))
        };
        println!("  {:<38} {:<20} {:<10} STATE", "MEMBER", "NAME", "STATUS");
        for m in &members {
            let id = m["id"].as_str().unwrap_or("");
            let state = if in_list("in_progress", id) {
                "in progress"
            } else if in_list("failed", id) {
                "failed"
            } else if m["converged"] == true {
                "converged"
            } else {
                "waiting"
            };
            println!(
                "  {:<38} {:<20} {:<10} {state}",
                id,
                m["name"].as_str().unwrap_or(""),
                m["status"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

pub(super) async fn watch(admin: &Admin, id: &str) -> Result<(), CliError> {
    loop {
        let v = admin.get(&format!("/v1/instances/{id}")).await?;
        if !admin.json() {
            // Clear the screen and home the cursor, as `watch(1)` does.
            print!("\x1b[2J\x1b[H");
        }
        status(admin, Some(id.to_owned())).await?;
        if v["progress"].is_null() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// `setpoint promote ID [--full]`.
pub(super) async fn promote(admin: &Admin, id: &str, full: bool) -> Result<(), CliError> {
    let v = admin
        .post_json(
            &format!("/v1/instances/{id}/promote"),
            &serde_json::json!({ "full": full }),
        )
        .await?;
    if admin.json() {
        print_json(&v);
    } else {
        println!(
            "{}promotion of {id}'s revision {} requested; its next step runs now",
            if full { "full " } else { "" },
            short(v["digest"].as_str().unwrap_or(""))
        );
    }
    Ok(())
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

pub(super) async fn explain(admin: &Admin, id: &str) -> Result<(), CliError> {
    let v = admin.get(&format!("/v1/instances/{id}/explain")).await?;
    if admin.json() {
        print_json(&v);
    } else {
        println!("{}", v["text"].as_str().unwrap_or(""));
    }
    Ok(())
}

pub(super) async fn diff(admin: &Admin, id: &str) -> Result<(), CliError> {
    let v = admin.get(&format!("/v1/instances/{id}/diff")).await?;
    if admin.json() {
        print_json(&v);
        return Ok(());
    }
    println!(
        "instance {id}: {} (rule `{}`, comparator {}, strategy {})",
        v["classification"].as_str().unwrap_or(""),
        v["rule"].as_str().unwrap_or(""),
        v["comparator"].as_str().unwrap_or(""),
        v["strategy"].as_str().unwrap_or("")
    );
    println!(
        "revision {}; actual state from {}",
        short(v["desired_digest"].as_str().unwrap_or("")),
        match v["actual_source"].as_str() {
            Some("control_plane") => "the control plane's running configuration",
            _ => "the host's applied record (the control plane does not report what runs)",
        }
    );
    println!(
        "decision: {}",
        v["decision"]["decision"].as_str().unwrap_or("")
    );
    let drifts = v["drifts"].as_array().cloned().unwrap_or_default();
    if drifts.is_empty() {
        println!("drifts: none");
    } else {
        println!("drifts:");
        for d in drifts {
            println!(
                "  {:<8} {:<30} {}",
                d["kind"].as_str().unwrap_or(""),
                d["path"].as_str().unwrap_or(""),
                d["message"].as_str().unwrap_or("")
            );
        }
    }
    let calls = v["calls"].as_array().cloned().unwrap_or_default();
    if calls.is_empty() {
        println!("plan: no control-plane calls");
    } else {
        println!("plan (dry-run, nothing sent):");
        for (n, c) in calls.iter().enumerate() {
            let call = c["call"].as_str().unwrap_or("");
            let target = c["target"].as_str().unwrap_or("");
            let line = match call {
                "wait" => format!("wait {target}"),
                "await-approval" => format!("pause for approval: {target}"),
                "set-traffic-weights" => {
                    let weights: Vec<String> = c["weights"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|w| {
                            format!("{}={}", w["instanceId"].as_str().unwrap_or(""), w["weight"])
                        })
                        .collect();
                    format!("{call} {target}: {}", weights.join(" "))
                }
                _ if c["mutating"] == true => format!("{call} {target}"),
                _ => format!("{call} {target}   (read)"),
            };
            println!("  {}. {line}", n + 1);
        }
    }
    println!("outcome: {}", v["outcome"].as_str().unwrap_or(""));
    Ok(())
}

pub(super) async fn mutate(admin: &Admin, id: &str, verb: &str) -> Result<(), CliError> {
    let v = admin.post(&format!("/v1/instances/{id}/{verb}")).await?;
    if admin.json() {
        print_json(&v);
    } else {
        match verb {
            "reconcile" => println!("reconcile of {id} queued"),
            "retry" if v["retried"] == true => {
                println!("{id}: the given-up revision will be tried again; reconcile queued")
            }
            "retry" => println!("{id} had no given-up revision; reconcile queued"),
            _ => println!(
                "abort of {id}'s revision {} requested; the strategy's abort runs next",
                short(v["digest"].as_str().unwrap_or(""))
            ),
        }
    }
    Ok(())
}

/// Approve what waits, naming its revision: shows the digest and the drift it releases,
/// and sends the digest, so a revision that replaced it meanwhile is not released.
pub(super) async fn approve(
    admin: &Admin,
    id: &str,
    digest: Option<String>,
) -> Result<(), CliError> {
    let digest = match digest {
        Some(d) => d,
        None => {
            let v = admin.get(&format!("/v1/instances/{id}")).await?;
            let Some(approval) = v["approval"].as_object() else {
                return Err(format!("instance {id} has nothing waiting for approval").into());
            };
            let digest = approval["digest"].as_str().unwrap_or("").to_owned();
            if !admin.json() {
                println!(
                    "approving revision {}: {}",
                    short(&digest),
                    approval["message"].as_str().unwrap_or("")
                );
            }
            digest
        }
    };
    let v = admin
        .post_json(
            &format!("/v1/instances/{id}/approve"),
            &serde_json::json!({ "digest": digest }),
        )
        .await?;
    if admin.json() {
        print_json(&v);
    } else {
        println!(
            "approved revision {} of {id}",
            short(v["digest"].as_str().unwrap_or(&digest))
        );
    }
    Ok(())
}

pub(super) async fn history(admin: &Admin, id: &str) -> Result<(), CliError> {
    let v = admin.get(&format!("/v1/instances/{id}/history")).await?;
    if admin.json() {
        print_json(&v);
        return Ok(());
    }
    let rows = v.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("{id}: no applied configuration recorded");
    }
    for (n, a) in rows.iter().enumerate() {
        let at = a["applied_at"]["secs_since_epoch"].as_u64().unwrap_or(0);
        println!(
            "{} {}  {}  {}",
            if n == 0 { "*" } else { " " },
            short(a["digest"].as_str().unwrap_or("")),
            chrono::DateTime::from_timestamp(at as i64, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            a["strategy"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("-")
        );
    }
    Ok(())
}

pub(super) async fn rollback(admin: &Admin, id: &str, to: Option<String>) -> Result<(), CliError> {
    let v = admin
        .post_json(
            &format!("/v1/instances/{id}/rollback"),
            &serde_json::json!({ "to": to }),
        )
        .await?;
    if admin.json() {
        print_json(&v);
    } else {
        println!(
            "{id}: revision {} is the desired configuration again; its strategy rolls it out",
            short(v["digest"].as_str().unwrap_or(""))
        );
    }
    Ok(())
}

pub(super) async fn audit(admin: &Admin, id: Option<&str>, limit: usize) -> Result<(), CliError> {
    let path = match id {
        Some(id) => format!("/v1/audit?instance={id}&limit={limit}"),
        None => format!("/v1/audit?limit={limit}"),
    };
    let v = admin.get(&path).await?;
    if admin.json() {
        print_json(&v);
        return Ok(());
    }
    for e in v.as_array().into_iter().flatten() {
        println!(
            "#{:<6} {:<12} {:<38} {}",
            e["id"],
            e["kind"].as_str().unwrap_or(""),
            e["instance_id"].as_str().unwrap_or("-"),
            e["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
