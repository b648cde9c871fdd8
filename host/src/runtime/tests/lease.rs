//! The serve loop and its lease (`lease.rs`), on fake guests: a service
//! offers its instance while it waits for mail, its mail waits while the
//! instance is lent, and what a borrower's dispatch left (a failure, an
//! exit) ends the service as its own would.

use std::sync::Arc;

use super::{Act, FakeGuest, FakeLoader, cause, client, core, spawn, within};
use crate::runtime::{Address, ErrorCause, GuestFailure, Kernel, ServiceHandle, StopReason};

/// A core with one echo service, once its instance is offered.
async fn offered_echo() -> (Arc<Kernel>, Address, Arc<ServiceHandle>) {
    let kernel = core(FakeLoader::default().with("echo", |m| Act::Answer(m.payload.to_vec())));
    let echo = within(spawn(&kernel, "echo")).await.expect("spawned");
    let handle = kernel.service_if(echo, |_| true).expect("listed");
    within(async {
        while !handle.lease.offered() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    (kernel, echo, handle)
}

/// A host client's call to `echo` with `payload`, once it is in the
/// service's mailbox.
async fn queue_call(
    kernel: &Arc<Kernel>,
    echo: Address,
    handle: &ServiceHandle,
    payload: &[u8],
) -> tokio::task::JoinHandle<Result<Vec<u8>, crate::runtime::CallError>> {
    let client = client(kernel);
    let payload = payload.to_vec();
    let call = tokio::spawn(async move { client.call(echo, payload).await });
    within(async {
        while handle.mailbox.len() != 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    call
}

#[tokio::test]
async fn mail_waits_while_the_instance_is_lent_and_is_served_after() {
    let (kernel, echo, handle) = offered_echo().await;
    let lent = handle
        .lease
        .borrow::<FakeGuest>()
        .expect("offered while idle");
    let call = queue_call(&kernel, echo, &handle, b"after").await;
    // Queued, not dispatched: the task cannot run its instance while lent.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!call.is_finished(), "served while its instance was lent");
    assert_eq!(
        handle
            .usage
            .dispatches
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(lent);
    let answer = within(call).await.expect("joined").expect("answered");
    assert_eq!(answer, b"after");
}

#[tokio::test]
async fn a_failure_left_in_the_lease_ends_the_service_and_answers_its_mail() {
    let (kernel, echo, handle) = offered_echo().await;
    let lent = handle
        .lease
        .borrow::<FakeGuest>()
        .expect("offered while idle");
    let call = queue_call(&kernel, echo, &handle, b"queued").await;
    // As a caller's dispatch of it that trapped leaves it.
    lent.failed(GuestFailure {
        cause: ErrorCause::Trapped,
        reason: "trapped while lent".into(),
        class: StopReason::Trap,
    });
    drop(lent);
    let answered = within(call).await.expect("joined");
    assert_eq!(cause(answered), Some(ErrorCause::Trapped));
    assert!(kernel.service_if(echo, |_| true).is_none(), "still listed");
    assert_eq!(
        kernel.stops[StopReason::Trap.index()].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn an_exit_asked_while_lent_ends_the_service() {
    let (kernel, echo, handle) = offered_echo().await;
    let mut lent = handle
        .lease
        .borrow::<FakeGuest>()
        .expect("offered while idle");
    lent.get().exit = true;
    drop(lent);
    // The borrower wakes the task, as `handoff.rs` does.
    handle.mailbox.wake(echo);
    within(async {
        while kernel.service_if(echo, |_| true).is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        kernel.stops[StopReason::Exited.index()].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
