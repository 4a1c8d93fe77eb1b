//! What a caller set in `CallOptions` is what an interceptor and a `tower`
//! layer read back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use drpc_conn::{
    CallOptions, CancellationToken, Endpoint, Invoker, Raw, Request, ServiceInvoker,
    with_interceptor,
};

#[test]
fn getters_return_what_was_set() {
    let none = CallOptions::new();
    assert!(none.get_metadata().is_empty());
    assert_eq!(none.get_deadline(), None);
    assert!(none.get_cancellation_token().is_none());

    let token = CancellationToken::new();
    let early = Instant::now() + Duration::from_secs(1);
    let opts = CallOptions::new()
        .metadata("tenant", "blue")
        .metadata("tenant", "green")
        .deadline(early)
        .timeout(Duration::from_secs(60))
        .cancel_on(token.clone());
    assert_eq!(opts.get_metadata().len(), 1);
    assert_eq!(opts.get_metadata()["tenant"], "green");
    // The earlier deadline stays; the wire's drpc-timeout pair is not part
    // of the metadata.
    assert_eq!(opts.get_deadline(), Some(early));
    let got = opts.get_cancellation_token().expect("a token");
    assert!(!got.is_cancelled());
    token.cancel();
    assert!(got.is_cancelled());
}

/// What the layer saw of a call: its token, deadline, whether it had a
/// cancellation token.
type Seen = (String, Option<Instant>, bool);

#[tokio::test]
async fn a_layer_reads_metadata_and_deadline_an_interceptor_set() {
    // Where streaming calls would go; never dialled here.
    let channel = Endpoint::tcp("127.0.0.1:1").connect_lazy();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let service = tower::service_fn({
        let seen = seen.clone();
        move |req: Request| {
            seen.lock().unwrap().push((
                req.metadata()
                    .get("authorization")
                    .cloned()
                    .unwrap_or_default(),
                req.deadline(),
                req.options().get_cancellation_token().is_some(),
            ));
            async move { Ok::<_, drpc_conn::Error>(req.message().clone()) }
        }
    });
    let invoker = with_interceptor(ServiceInvoker::new(service, channel), |_path, opts| {
        Ok(opts.metadata("authorization", "Bearer t0k3n"))
    });

    let deadline = Instant::now() + Duration::from_secs(30);
    let opts = CallOptions::new()
        .deadline(deadline)
        .cancel_on(CancellationToken::new());
    let reply: Bytes = invoker
        .invoke(&Raw, "/echo.Echo/Say", &Bytes::from("hi"), &opts)
        .await
        .expect("the layer answers");
    assert_eq!(reply, "hi");
    let reply: Bytes = invoker
        .invoke(
            &Raw,
            "/echo.Echo/Say",
            &Bytes::from("again"),
            &CallOptions::new(),
        )
        .await
        .expect("the layer answers");
    assert_eq!(reply, "again");

    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("Bearer t0k3n".to_owned(), Some(deadline), true),
            ("Bearer t0k3n".to_owned(), None, false),
        ]
    );
}
