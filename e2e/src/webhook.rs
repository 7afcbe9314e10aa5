//! How the tests register an executor-Job webhook with the host apiserver.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kosmos_api::contract;
use kube::api::ObjectMeta;

/// MutatingWebhookConfiguration `name`: executor Jobs (those with the executor label) of
/// `namespace` go to `url`, whose certificate `ca_pem` signed, on `operations` (`CREATE`; add
/// `UPDATE` where a test checks the webhook's UPDATE rules). Otherwise as the chart registers
/// the webhook (failurePolicy Fail, sideEffects None, 10 s, reinvocationPolicy IfNeeded), but
/// scoped to one test namespace and called at a URL instead of a Service.
pub fn executor_webhook_configuration(
    name: &str,
    namespace: &str,
    url: &str,
    ca_pem: &str,
    operations: &[&str],
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "executor-jobs.plugin.kosmos.io".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                url: Some(url.to_owned()),
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["batch".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(operations.iter().map(|o| (*o).to_owned()).collect()),
                resources: Some(vec!["jobs".into()]),
                scope: Some("Namespaced".into()),
            }]),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: contract::EXECUTOR_LABEL.into(),
                    operator: "Exists".into(),
                    values: None,
                }]),
                match_labels: None,
            }),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_owned(),
                        namespace.to_owned(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            }),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(10),
            reinvocation_policy: Some("IfNeeded".into()),
            ..MutatingWebhook::default()
        }]),
    }
}
