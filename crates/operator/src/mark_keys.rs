//! The keys the webhook's marks are verified with, shared by every reconciliation: the mark key
//! Secret is read at most every [`REFRESH`], and at once when a mark names a key not held. Read
//! per reconciliation instead, it was a fifth of the operator's requests at 1,000 VirtualClusters
//! (docs/benchmarks.md); the webhook reads the same Secret on the same period, so a rotation or
//! a removed key reaches both within a minute.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kosmos_api::mark::{self, Key, KeySecret};
use kube::{Api, Client};
use tokio::sync::Mutex;

use crate::error::{Error, kube_err};
use crate::jobs;

/// How long keys read from the Secret are used before it is read again (the webhook's period).
pub const REFRESH: Duration = Duration::from_secs(60);

/// The mark keys last read, and when.
pub struct MarkKeys {
    secret: KeySecret,
    refresh: Duration,
    // A tokio Mutex held across the read: reconciliations that all find the keys stale wait for
    // one read instead of each making its own.
    held: Mutex<Option<Held>>,
}

struct Held {
    read_at: Instant,
    keys: Arc<[Key]>,
}

impl MarkKeys {
    /// Keys of `secret`, none held yet.
    pub fn new(secret: KeySecret) -> Self {
        Self::with_refresh(secret, REFRESH)
    }

    fn with_refresh(secret: KeySecret, refresh: Duration) -> Self {
        Self {
            secret,
            refresh,
            held: Mutex::new(None),
        }
    }

    /// The keys to check `job`'s mark with: none when it has no mark (a VirtualCluster without
    /// marked Jobs never depends on the Secret), else the held keys if they are fresh and hold
    /// the key the mark names, else the Secret's keys read now.
    pub async fn for_job(&self, client: &Client, job: &Job) -> Result<Arc<[Key]>, Error> {
        if !jobs::has_mark(job) {
            return Ok(Arc::from([]));
        }
        let wanted = mark::key_id(job);
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref() {
            let fresh = h.read_at.elapsed() < self.refresh;
            // A mark that is not of the signed form fails to verify whatever the keys: no read.
            let holds = wanted.is_none_or(|id| h.keys.iter().any(|k| k.id() == id));
            if fresh && holds {
                return Ok(h.keys.clone());
            }
        }
        let keys: Arc<[Key]> = self.read(client).await?.into();
        *held = Some(Held {
            read_at: Instant::now(),
            keys: keys.clone(),
        });
        Ok(keys)
    }

    async fn read(&self, client: &Client) -> Result<Vec<Key>, Error> {
        let secret = &self.secret;
        let found = Api::<Secret>::namespaced(client.clone(), &secret.namespace)
            .get(&secret.name)
            .await
            .map_err(kube_err(format!(
                "reading the mark key Secret {secret} (the webhook's --mark-key-secret) to verify executor job marks"
            )))?;
        mark::keys_of_secret(&found)
            .map_err(|e| Error::Internal(format!("mark key Secret {secret}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use http::{Method, Request, Response};
    use k8s_openapi::ByteString;
    use kosmos_api::contract;
    use kube::client::Body;
    use serde_json::json;

    fn secret_name() -> KeySecret {
        KeySecret {
            namespace: "kosmos-system".into(),
            name: "plugin-webhook-mark-key".into(),
        }
    }

    fn job(name: &str) -> Job {
        serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": { "name": name, "namespace": "ns" },
        }))
        .unwrap()
    }

    fn marked(bytes: &[u8], name: &str) -> Job {
        let mut job = job(name);
        let mark = mark::sign(&Key::new(bytes).unwrap(), &job);
        job.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(contract::INJECTED_ANNOTATION.into(), mark);
        job
    }

    fn secret_with(bytes: &[u8]) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                mark::KEY_DATA.to_owned(),
                ByteString(bytes.to_vec()),
            )])),
            ..Secret::default()
        }
    }

    /// Answers each GET of the key Secret with the next of `answers`, and counts the reads.
    fn serve(answers: Vec<Secret>) -> (Client, tokio::task::JoinHandle<usize>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(async move {
            let mut reads = 0;
            for answer in answers {
                let Some((request, send)) = handle.next_request().await else {
                    break;
                };
                assert_eq!(request.method(), Method::GET);
                assert!(
                    request
                        .uri()
                        .path()
                        .ends_with("/namespaces/kosmos-system/secrets/plugin-webhook-mark-key"),
                    "{}",
                    request.uri()
                );
                reads += 1;
                send.send_response(
                    Response::builder()
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
            assert!(handle.next_request().await.is_none(), "no further read");
            reads
        });
        (Client::new(service, "default"), server)
    }

    const ONE: [u8; 32] = [1; 32];
    const TWO: [u8; 32] = [2; 32];

    #[tokio::test]
    async fn one_read_serves_every_job_signed_with_a_held_key() {
        let (client, server) = serve(vec![secret_with(&ONE)]);
        let keys = MarkKeys::new(secret_name());
        let unmarked = keys.for_job(&client, &job("a")).await.unwrap();
        assert!(unmarked.is_empty(), "an unmarked Job needs no keys");
        for name in ["a", "b", "c"] {
            let job = marked(&ONE, name);
            let held = keys.for_job(&client, &job).await.unwrap();
            assert_eq!(mark::verify(&held, &job), Ok(()));
        }
        drop(client);
        assert_eq!(server.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_mark_naming_a_key_not_held_reads_the_secret_again() {
        // The webhook rotated: the new key signs, the old one is `previous`.
        let mut rotated = secret_with(&TWO);
        rotated
            .data
            .get_or_insert_with(Default::default)
            .insert(mark::PREVIOUS_KEY_DATA.to_owned(), ByteString(ONE.to_vec()));
        let (client, server) = serve(vec![secret_with(&ONE), rotated]);
        let keys = MarkKeys::new(secret_name());
        let old = marked(&ONE, "a");
        keys.for_job(&client, &old).await.unwrap();
        let new = marked(&TWO, "b");
        let held = keys.for_job(&client, &new).await.unwrap();
        assert_eq!(mark::verify(&held, &new), Ok(()));
        assert_eq!(mark::verify(&held, &old), Ok(()));
        drop(client);
        assert_eq!(server.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn keys_older_than_the_refresh_are_read_again_so_a_removed_key_stops_verifying() {
        let (client, server) = serve(vec![secret_with(&ONE), secret_with(&TWO)]);
        let keys = MarkKeys::with_refresh(secret_name(), Duration::ZERO);
        let job = marked(&ONE, "a");
        let first = keys.for_job(&client, &job).await.unwrap();
        assert_eq!(mark::verify(&first, &job), Ok(()));
        let second = keys.for_job(&client, &job).await.unwrap();
        assert_eq!(
            mark::verify(&second, &job),
            Err(mark::MarkError::UnknownKey(
                Key::new(&ONE).unwrap().id().to_owned()
            ))
        );
        drop(client);
        assert_eq!(server.await.unwrap(), 2);
    }
}
