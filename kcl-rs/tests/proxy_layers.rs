//! The fault proxy's seam, `ProxyLayer`: layers stack in order behind the fault plan,
//! and each can refuse, hold, rewrite or close, as the SDK then sees it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use kcl::aws::Endpoints;
use kcl_local::faults::{
    Answer, Fault, FaultPlan, FaultProxy, Forward, LayerFuture, ProxyLayer, ProxyRequest, Rule,
    dynamodb_target,
};
use kcl_local::testing::wait_for;
use kcl_local::{LocalAws, LocalAwsOptions};
use tokio::sync::Notify;

/// What each layer does, and the journal of what layers saw, in order.
enum Behaviour {
    /// Notes the request, forwards it, notes the answer's status.
    Watch,
    /// Answers `AccessDeniedException` for this action.
    Deny(&'static str),
    /// Closes the connection for this action.
    Close(&'static str),
    /// Holds this action until notified.
    Hold(&'static str, Arc<Notify>),
    /// Rewrites the ListTables answer to name one more table.
    AddTable(&'static str),
}

struct Layer {
    name: &'static str,
    behaviour: Behaviour,
    journal: Arc<Mutex<Vec<String>>>,
}

impl Layer {
    fn note(&self, entry: String) {
        self.journal
            .lock()
            .unwrap()
            .push(format!("{}: {entry}", self.name));
    }
}

impl ProxyLayer for Layer {
    fn call<'a>(&'a self, request: ProxyRequest, forward: Forward<'a>) -> LayerFuture<'a> {
        Box::pin(async move {
            let action = request.action().to_string();
            self.note(format!("request {action}"));
            match &self.behaviour {
                Behaviour::Deny(denied) if *denied == action => {
                    return Answer::aws_error(
                        &request.operation,
                        400,
                        "AccessDeniedException",
                        "denied by a layer",
                    );
                }
                Behaviour::Close(closed) if *closed == action => return Answer::Close,
                Behaviour::Hold(held, release) if *held == action => {
                    self.note("holding".into());
                    release.notified().await;
                }
                _ => {}
            }
            let mut answer = forward.send(request).await;
            if let (Behaviour::AddTable(table), Some(response)) =
                (&self.behaviour, answer.success_mut())
                && action == "ListTables"
            {
                let mut json = response.json().unwrap();
                json["TableNames"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!(table));
                response.set_json(&json);
            }
            let status = answer.response().map(|r| r.status.as_u16());
            self.note(format!("answer {status:?}"));
            answer
        })
    }
}

struct Env {
    aws: LocalAws,
    proxy: FaultProxy,
    client: aws_sdk_dynamodb::Client,
    journal: Arc<Mutex<Vec<String>>>,
}

async fn env(behaviours: Vec<(&'static str, Behaviour)>) -> Env {
    let aws = LocalAws::start(LocalAwsOptions::from_env()).await.unwrap();
    let journal = Arc::new(Mutex::new(Vec::new()));
    let layers: Vec<Arc<dyn ProxyLayer>> = behaviours
        .into_iter()
        .map(|(name, behaviour)| {
            Arc::new(Layer {
                name,
                behaviour,
                journal: Arc::clone(&journal),
            }) as Arc<dyn ProxyLayer>
        })
        .collect();
    let proxy = FaultProxy::start_layered(
        &aws.endpoints().dynamodb.unwrap(),
        FaultPlan::new(1),
        layers,
    )
    .await
    .unwrap();
    let endpoints = Endpoints::local(aws.endpoints().kinesis.unwrap(), proxy.url());
    let config = kcl::aws::sdk_config(&endpoints).await;
    let client = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&config)
            .endpoint_url(proxy.url())
            .retry_config(RetryConfig::disabled())
            .build(),
    );
    Env {
        aws,
        proxy,
        client,
        journal,
    }
}

impl Env {
    fn journal(&self) -> Vec<String> {
        std::mem::take(&mut *self.journal.lock().unwrap())
    }

    async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.aws.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layers_run_in_order_behind_the_plan_and_may_rewrite_answers() {
    let env = env(vec![
        ("outer", Behaviour::Watch),
        ("inner", Behaviour::AddTable("from-a-layer")),
    ])
    .await;
    let listed = env.client.list_tables().send().await.unwrap();
    assert_eq!(listed.table_names(), ["from-a-layer"]);
    assert_eq!(
        env.journal(),
        [
            "outer: request ListTables",
            "inner: request ListTables",
            "inner: answer Some(200)",
            "outer: answer Some(200)",
        ]
    );
    // A fault of the plan answers before any layer sees the request.
    env.proxy
        .plan()
        .add(Rule::new(dynamodb_target("ListTables"), Fault::throttling_exception()).for_next(1));
    let throttled = env.client.list_tables().send().await.unwrap_err();
    assert_eq!(throttled.code(), Some("ThrottlingException"));
    assert!(env.journal().is_empty());
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_refuses_or_closes_without_forwarding() {
    let env = env(vec![
        ("deny", Behaviour::Deny("DescribeTable")),
        ("close", Behaviour::Close("ListTables")),
        ("last", Behaviour::Watch),
    ])
    .await;
    let denied = env
        .client
        .describe_table()
        .table_name("t")
        .send()
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some("AccessDeniedException"));
    assert_eq!(env.journal(), ["deny: request DescribeTable"]);

    let closed = env.client.list_tables().send().await.unwrap_err();
    assert!(
        matches!(
            closed,
            aws_sdk_dynamodb::error::SdkError::DispatchFailure(_)
        ),
        "{closed:?}"
    );
    assert_eq!(
        env.journal(),
        [
            "deny: request ListTables",
            "close: request ListTables",
            "deny: answer None",
        ]
    );
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_holds_a_request_until_released() {
    let release = Arc::new(Notify::new());
    let env = env(vec![(
        "hold",
        Behaviour::Hold("ListTables", Arc::clone(&release)),
    )])
    .await;
    let call = tokio::spawn(env.client.list_tables().send());
    wait_for("the request to be held", Duration::from_secs(10), || {
        let held = env
            .journal
            .lock()
            .unwrap()
            .iter()
            .any(|e| e == "hold: holding");
        async move { held.then_some(()) }
    })
    .await;
    assert!(!call.is_finished());
    release.notify_one();
    call.await.unwrap().unwrap();
    assert_eq!(env.journal().last().unwrap(), "hold: answer Some(200)");
    env.shutdown().await;
}
