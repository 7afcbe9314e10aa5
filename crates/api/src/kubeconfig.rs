//! A virtual cluster's kubeconfig is data, never code.
//!
//! Whoever may write a VirtualCluster chooses the kubeconfig the operator probes the virtual API
//! with (`--readiness builtin`) and copies into the executor's Secret. A kubeconfig can ask its
//! client to run a command (`exec`, `auth-provider`), to read a file (`tokenFile`,
//! `client-certificate`, `certificate-authority`: the operator's own ServiceAccount token, for
//! instance), to go through a proxy, or to talk plain http. [`check`] accepts only what is data:
//! an `https` server with inline CA data, and inline credentials (a bearer token, or a client
//! certificate and key). Everything else is refused, naming the field, by an allow-list: a field
//! added to kubeconfig in a later Kubernetes is refused until someone decides it is data.
//!
//! What passes is written out again by [`SafeKubeconfig::to_yaml`] with only the current context,
//! its cluster and its user, and only the accepted fields: the client that reads it (kube-rs in
//! the operator, kubectl and helm in the executor) sees exactly what was checked, whatever its
//! YAML parser makes of duplicate keys, anchors or fields this module does not know.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_yaml::{Mapping, Value};

use crate::validation::FieldError;

/// A kubeconfig that passed [`check`]: the current context's cluster and user, accepted fields
/// only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafeKubeconfig {
    context: NamedContext,
    cluster: NamedCluster,
    user: NamedUser,
}

impl SafeKubeconfig {
    /// The API server's URL (always `https`).
    pub fn server(&self) -> &str {
        &self.cluster.cluster.server
    }

    /// The kubeconfig to hand to a client: the checked fields only, one context.
    pub fn to_yaml(&self) -> String {
        let out = Out {
            api_version: "v1",
            kind: "Config",
            clusters: [&self.cluster],
            users: [&self.user],
            contexts: [&self.context],
            current_context: &self.context.name,
        };
        // Plain strings, booleans and lists: serialization cannot fail.
        serde_yaml::to_string(&out).unwrap_or_default()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Out<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [&'a NamedCluster; 1],
    users: [&'a NamedUser; 1],
    contexts: [&'a NamedContext; 1],
    current_context: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate_authority_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_compression: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
struct Context {
    cluster: String,
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
}

/// Why a field is refused, for the fields a client would honour by running, reading or sending
/// something: the reason tells the owner what to write instead.
fn refused_reason(key: &str) -> Option<&'static str> {
    Some(match key {
        "exec" => "runs a command in the client; put an inline token or client certificate here",
        "auth-provider" => {
            "runs a provider plugin in the client; put an inline token or client certificate here"
        }
        "tokenFile" => "reads a file of the client's host; put the token inline (token)",
        "client-certificate" => {
            "reads a file of the client's host; put the certificate inline (client-certificate-data)"
        }
        "client-key" => "reads a file of the client's host; put the key inline (client-key-data)",
        "certificate-authority" => {
            "reads a file of the client's host; put the CA inline (certificate-authority-data)"
        }
        "proxy-url" => "sends the client's traffic through a proxy of the kubeconfig's choosing",
        "username" | "password" => {
            "basic authentication is not accepted (Kubernetes removed it); use a token or a client certificate"
        }
        "as" | "as-uid" | "as-groups" | "as-user-extra" => {
            "impersonation is not accepted in a virtual cluster's kubeconfig"
        }
        _ => return None,
    })
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Checks a kubeconfig taken from a VirtualCluster; the error names the first refused field
/// (e.g. `users[0].user.exec`) and never contains a value of the kubeconfig.
pub fn check(bytes: &[u8]) -> Result<SafeKubeconfig, FieldError> {
    let text = std::str::from_utf8(bytes).map_err(|_| refuse("kubeconfig", "is not UTF-8 text"))?;
    // serde_yaml's error would quote the offending text, which may be a credential: say where.
    let doc: Value = serde_yaml::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        refuse("kubeconfig", format!("is not valid YAML{at}"))
    })?;
    let top = mapping(&doc, "kubeconfig")?;
    let mut clusters = Vec::new();
    let mut users = Vec::new();
    let mut contexts = Vec::new();
    let mut current = None;
    for (key, value) in top {
        let key = key_str(key, "kubeconfig")?;
        match key {
            "apiVersion" | "kind" => {
                string(value, key)?;
            }
            // Client-side settings with no effect on where or how the client connects: dropped.
            "preferences" | "extensions" => {}
            "clusters" => {
                for (i, item) in list(value, key)?.iter().enumerate() {
                    clusters.push(named_cluster(item, &format!("clusters[{i}]"))?);
                }
            }
            "users" => {
                for (i, item) in list(value, key)?.iter().enumerate() {
                    users.push(named_user(item, &format!("users[{i}]"))?);
                }
            }
            "contexts" => {
                for (i, item) in list(value, key)?.iter().enumerate() {
                    contexts.push(named_context(item, &format!("contexts[{i}]"))?);
                }
            }
            "current-context" => current = Some(string(value, key)?),
            other => return Err(unknown(other)),
        }
    }
    unique(clusters.iter().map(|c| c.name.as_str()), "clusters")?;
    unique(users.iter().map(|u| u.name.as_str()), "users")?;
    unique(contexts.iter().map(|c| c.name.as_str()), "contexts")?;
    let current = current
        .filter(|c| !c.is_empty())
        .ok_or_else(|| refuse("current-context", "is missing: name the context to use"))?;
    let context = contexts
        .into_iter()
        .find(|c| c.name == current)
        .ok_or_else(|| refuse("current-context", "names no context in contexts"))?;
    let cluster = clusters
        .into_iter()
        .find(|c| c.name == context.context.cluster)
        .ok_or_else(|| {
            refuse(
                "current-context",
                format!(
                    "names context {:?}, whose cluster {:?} is not in clusters",
                    context.name, context.context.cluster
                ),
            )
        })?;
    let user = users
        .into_iter()
        .find(|u| u.name == context.context.user)
        .ok_or_else(|| {
            refuse(
                "current-context",
                format!(
                    "names context {:?}, whose user {:?} is not in users",
                    context.name, context.context.user
                ),
            )
        })?;
    Ok(SafeKubeconfig {
        context,
        cluster,
        user,
    })
}

fn unknown(field: &str) -> FieldError {
    refuse(
        field,
        "is not a field this operator accepts in a virtual cluster's kubeconfig",
    )
}

fn unique<'s>(names: impl Iterator<Item = &'s str>, field: &str) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(refuse(
                field,
                format!("has two entries named {name:?}; clients disagree on which one counts"),
            ));
        }
    }
    Ok(())
}

fn mapping<'v>(value: &'v Value, field: &str) -> Result<&'v Mapping, FieldError> {
    value
        .as_mapping()
        .ok_or_else(|| refuse(field, "must be a mapping"))
}

fn list<'v>(value: &'v Value, field: &str) -> Result<&'v [Value], FieldError> {
    match value {
        Value::Null => Ok(&[]),
        Value::Sequence(items) => Ok(items),
        _ => Err(refuse(field, "must be a list")),
    }
}

fn key_str<'v>(key: &'v Value, field: &str) -> Result<&'v str, FieldError> {
    key.as_str()
        .ok_or_else(|| refuse(field, "has a key that is not a string"))
}

fn string(value: &Value, field: &str) -> Result<String, FieldError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| refuse(field, "must be a string"))
}

fn boolean(value: &Value, field: &str) -> Result<bool, FieldError> {
    value
        .as_bool()
        .ok_or_else(|| refuse(field, "must be true or false"))
}

/// Base64 as the kubeconfig's `*-data` fields carry it (standard alphabet, padded).
fn base64_data(value: &Value, field: &str) -> Result<String, FieldError> {
    let text = string(value, field)?;
    let clean: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let valid = !clean.is_empty()
        && clean.len().is_multiple_of(4)
        && clean.trim_end_matches('=').len() + 2 >= clean.len()
        && clean
            .trim_end_matches('=')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
    if !valid {
        return Err(refuse(field, "is not base64 data"));
    }
    Ok(clean)
}

/// The `name` and the one nested mapping (`cluster`, `user` or `context`) of a list entry.
fn named<'v>(
    item: &'v Value,
    field: &str,
    inner: &str,
) -> Result<(String, &'v Mapping), FieldError> {
    let map = mapping(item, field)?;
    let mut name = None;
    let mut body = None;
    for (key, value) in map {
        let key = key_str(key, field)?;
        match key {
            "name" => name = Some(string(value, &format!("{field}.name"))?),
            k if k == inner => body = Some(mapping(value, &format!("{field}.{inner}"))?),
            "extensions" => {}
            other => return Err(unknown(&format!("{field}.{other}"))),
        }
    }
    let name = name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| refuse(format!("{field}.name"), "is missing"))?;
    let body = body.ok_or_else(|| refuse(format!("{field}.{inner}"), "is missing"))?;
    Ok((name, body))
}

fn named_cluster(item: &Value, field: &str) -> Result<NamedCluster, FieldError> {
    let (name, map) = named(item, field, "cluster")?;
    let mut server = None;
    let mut cluster = Cluster {
        server: String::new(),
        certificate_authority_data: None,
        tls_server_name: None,
        disable_compression: None,
    };
    for (key, value) in map {
        let key = key_str(key, field)?;
        let here = format!("{field}.cluster.{key}");
        if let Some(why) = refused_reason(key) {
            return Err(refuse(here, why));
        }
        match key {
            "server" => server = Some(https_server(value, &here)?),
            "certificate-authority-data" => {
                cluster.certificate_authority_data = Some(base64_data(value, &here)?);
            }
            "tls-server-name" => cluster.tls_server_name = Some(string(value, &here)?),
            "disable-compression" => cluster.disable_compression = Some(boolean(value, &here)?),
            "insecure-skip-tls-verify" => {
                if boolean(value, &here)? {
                    return Err(refuse(
                        here,
                        "turns off the check of the server's certificate, so anyone on the path \
                         receives the credentials; put the CA in certificate-authority-data",
                    ));
                }
            }
            "extensions" => {}
            other => return Err(unknown(&format!("{field}.cluster.{other}"))),
        }
    }
    cluster.server =
        server.ok_or_else(|| refuse(format!("{field}.cluster.server"), "is missing"))?;
    Ok(NamedCluster { name, cluster })
}

/// An `https://host[:port][/path]` URL.
fn https_server(value: &Value, field: &str) -> Result<String, FieldError> {
    let text = string(value, field)?;
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(refuse(field, "must be an https:// URL"));
    };
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(refuse(
            field,
            format!("must be an https:// URL, not {scheme}: credentials must not travel in clear"),
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(refuse(
            field,
            "must name a host (and no user information): https://host[:port]",
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse(
            field,
            "must not contain spaces or control characters",
        ));
    }
    Ok(text)
}

fn named_user(item: &Value, field: &str) -> Result<NamedUser, FieldError> {
    let (name, map) = named(item, field, "user")?;
    let mut user = User {
        token: None,
        client_certificate_data: None,
        client_key_data: None,
    };
    for (key, value) in map {
        let key = key_str(key, field)?;
        let here = format!("{field}.user.{key}");
        if let Some(why) = refused_reason(key) {
            return Err(refuse(here, why));
        }
        match key {
            "token" => {
                let token = string(value, &here)?;
                if token.chars().any(char::is_control) {
                    return Err(refuse(here, "must not contain control characters"));
                }
                user.token = Some(token);
            }
            "client-certificate-data" => {
                user.client_certificate_data = Some(base64_data(value, &here)?);
            }
            "client-key-data" => user.client_key_data = Some(base64_data(value, &here)?),
            "extensions" => {}
            other => return Err(unknown(&format!("{field}.user.{other}"))),
        }
    }
    match (&user.client_certificate_data, &user.client_key_data) {
        (Some(_), None) => Err(refuse(
            format!("{field}.user.client-key-data"),
            "is missing: client-certificate-data needs its key",
        )),
        (None, Some(_)) => Err(refuse(
            format!("{field}.user.client-certificate-data"),
            "is missing: client-key-data needs its certificate",
        )),
        _ => Ok(NamedUser { name, user }),
    }
}

fn named_context(item: &Value, field: &str) -> Result<NamedContext, FieldError> {
    let (name, map) = named(item, field, "context")?;
    let mut cluster = None;
    let mut user = None;
    let mut namespace = None;
    for (key, value) in map {
        let key = key_str(key, field)?;
        let here = format!("{field}.context.{key}");
        match key {
            "cluster" => cluster = Some(string(value, &here)?),
            "user" => user = Some(string(value, &here)?),
            "namespace" => namespace = Some(string(value, &here)?),
            "extensions" => {}
            other => return Err(unknown(&format!("{field}.context.{other}"))),
        }
    }
    let context = Context {
        cluster: cluster.ok_or_else(|| refuse(format!("{field}.context.cluster"), "is missing"))?,
        user: user.ok_or_else(|| refuse(format!("{field}.context.user"), "is missing"))?,
        namespace,
    };
    Ok(NamedContext { name, context })
}

#[cfg(test)]
mod tests;
