//! The core's services without an instance, on the fake guest:
//! hibernation (a request owed across it, a failed wake) and template spawn.

use super::*;

/// A core whose services hibernate after 5 ms idle, with module `keeper`
/// (a kept state) and `forgetful` (a state its next instance refuses), both
/// holding every request unanswered.
fn core_that_hibernates() -> Arc<Kernel> {
    let config = NodeConfig {
        scheduler: crate::config::Scheduler::Tokio,
        limits: crate::config::Limits {
            hibernate_after_ms: 5,
            ..crate::config::Limits::default()
        },
        ..NodeConfig::default()
    };
    let limits = config.limits.resolved();
    let loader = FakeLoader::default()
        .with_state("keeper", FakeState::Kept, |_| Act::Nothing)
        .with_state("forgetful", FakeState::Refused, |_| Act::Nothing)
        .with_state("slow", FakeState::Slow, |_| Act::Nothing);
    Kernel::new(&config, limits, Arc::new(loader)).expect("the core starts")
}

async fn hibernated(kernel: &Kernel, service: Address) {
    let asleep = async {
        while kernel.service_info(service).map(|i| i.state) != Some("hibernated") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    within(asleep).await;
}

/// A request owed across a hibernation is still owed after it: when the
/// service is killed asleep, its caller gets `killed` instead of waiting
/// for ever.
#[tokio::test]
async fn a_request_owed_across_a_hibernation_ends_when_the_service_is_killed() {
    let kernel = core_that_hibernates();
    let keeper = spawn(&kernel, "keeper").await.expect("spawned");
    let c = client(&kernel);
    let answer = c.start_call(keeper, b"hold".to_vec()).expect("sent");
    hibernated(&kernel, keeper).await;
    assert_eq!(kernel.hibernated_services(), 1);
    assert!(kernel.kill(TenantId::HOST, keeper));
    assert_eq!(cause(within(answer).await), Some(ErrorCause::Killed));
    assert_eq!(kernel.hibernated_services(), 0);
}

/// A service that takes longer to keep its state than the sweeper takes
/// between looks is asked once: an ask while it was keeping left a wake in
/// its mailbox that woke it as soon as it slept, again and again (found on
/// JavaScript, whose memory image takes milliseconds).
#[tokio::test]
async fn a_service_slow_to_keep_its_state_hibernates_once() {
    let kernel = core_that_hibernates();
    let slow = spawn(&kernel, "slow").await.expect("spawned");
    hibernated(&kernel, slow).await;
    // Nothing should happen now: several of the sweeper's looks (every
    // 5 ms) pass while the service stays asleep.
    tokio::time::sleep(4 * SLOW_SAVE).await;
    let info = kernel.service_info(slow).expect("it lives");
    assert_eq!((info.state, info.hibernations), ("hibernated", 1));
}

/// A wake that fails (here `load-state` refuses the state) ends the
/// service: the request it owed and the one that woke it end with an error
/// instead of waiting, and the stop is counted as an error.
#[tokio::test]
async fn a_failed_wake_ends_the_service_and_its_sessions() {
    let kernel = core_that_hibernates();
    let forgetful = spawn(&kernel, "forgetful").await.expect("spawned");
    let c = client(&kernel);
    let owed = c.start_call(forgetful, b"hold".to_vec()).expect("sent");
    hibernated(&kernel, forgetful).await;
    let waking = c.start_call(forgetful, b"wake".to_vec()).expect("sent");
    assert_eq!(cause(within(owed).await), Some(ErrorCause::Exited));
    assert!(
        within(waking).await.is_err(),
        "the waking call was answered"
    );
    assert!(
        kernel.service_info(forgetful).is_none(),
        "the service lives on"
    );
    let errors = &kernel.stops[StopReason::Error.index()];
    assert_eq!(errors.load(std::sync::atomic::Ordering::Relaxed), 1);
}

impl FakeModule {
    fn instances(&self) -> usize {
        self.instances.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A wake takes an instance made ahead after an earlier wake of its
/// module, with no instantiation on its path, bound to the service (its
/// answer comes back); removing the tenant drops what was made for it.
#[tokio::test]
async fn a_wake_takes_an_instance_made_ahead_by_an_earlier_one() {
    let config = NodeConfig {
        scheduler: crate::config::Scheduler::Tokio,
        limits: crate::config::Limits {
            hibernate_after_ms: 5,
            template_spawn: false,
            ..crate::config::Limits::default()
        },
        ..NodeConfig::default()
    };
    let limits = config.limits.resolved();
    let loader = FakeLoader::default().with_state("answerer", FakeState::Kept, |m| {
        Act::Answer(m.payload.to_vec())
    });
    let answerer = loader.get("answerer");
    let kernel = Kernel::new(&config, limits, Arc::new(loader)).expect("the core starts");
    let (first, second) = (
        spawn(&kernel, "answerer").await.expect("spawned"),
        spawn(&kernel, "answerer").await.expect("spawned"),
    );
    hibernated(&kernel, first).await;
    hibernated(&kernel, second).await;
    let c = client(&kernel);
    assert_eq!(
        within(c.call(first, b"1".to_vec())).await,
        Ok(b"1".to_vec())
    );
    within(async {
        while kernel.ahead.len() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let instances = answerer.instances();
    assert_eq!(
        within(c.call(second, b"2".to_vec())).await,
        Ok(b"2".to_vec())
    );
    assert_eq!(answerer.instances(), instances, "the wake made an instance");
    assert_eq!(kernel.wakes_ahead(), 1);
    // Taken, and made again for the next wake.
    within(async {
        while kernel.ahead.len() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    let made = answerer
        .made_ahead
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(made, 2);
    kernel.ahead.forget_tenant(TenantId::SYSTEM);
    assert_eq!(kernel.ahead.len(), 0);
}

/// A core (hibernation off) with module `pure` (a kept state, a pure
/// `init`) and `impure` (a kept state, an `init` that calls an import),
/// both answering with the payload; the two modules, to count instances.
fn core_with_templates(template_spawn: bool) -> (Arc<Kernel>, Arc<FakeModule>, Arc<FakeModule>) {
    let config = NodeConfig {
        scheduler: crate::config::Scheduler::Tokio,
        limits: crate::config::Limits {
            template_spawn,
            ..crate::config::Limits::default()
        },
        ..NodeConfig::default()
    };
    let limits = config.limits.resolved();
    let loader = FakeLoader::default()
        .with_state("pure", FakeState::Kept, |m| Act::Answer(m.payload.to_vec()))
        .with_impure_init("impure", FakeState::Kept, |m| {
            Act::Answer(m.payload.to_vec())
        });
    let (pure, impure) = (loader.get("pure"), loader.get("impure"));
    let kernel = Kernel::new(&config, limits, Arc::new(loader)).expect("the core starts");
    (kernel, pure, impure)
}

fn state_of(kernel: &Kernel, service: Address) -> Option<&'static str> {
    kernel.service_info(service).map(|i| i.state)
}

async fn spawn_with(kernel: &Arc<Kernel>, module: &str, args: &[u8]) -> Address {
    let system = kernel.tenant(TenantId::SYSTEM).expect("system tenant");
    let (tx, rx) = oneshot::channel();
    kernel.spawn_detached(system, module.to_string(), args.to_vec(), Ready::Host(tx));
    within(rx).await.expect("answered").expect("spawned")
}

/// A spawn with the module and args of an earlier one whose `init` was
/// pure is born hibernated: no instance until its first message, which
/// wakes it on the kept state and is answered. Other args run `init`.
#[tokio::test]
async fn a_spawn_like_an_earlier_pure_one_is_born_hibernated() {
    let (kernel, pure, _) = core_with_templates(true);
    let first = spawn_with(&kernel, "pure", b"a").await;
    assert_eq!(pure.instances(), 1);
    assert_ne!(state_of(&kernel, first), Some("hibernated"));
    let born = spawn_with(&kernel, "pure", b"a").await;
    assert_eq!(state_of(&kernel, born), Some("hibernated"));
    assert_eq!(pure.instances(), 1, "born without an instance");
    assert_eq!(kernel.hibernated_services(), 1);
    assert_eq!(kernel.template_spawns(), 1);
    let c = client(&kernel);
    assert_eq!(
        within(c.call(born, b"hi".to_vec())).await,
        Ok(b"hi".to_vec())
    );
    assert_eq!(pure.instances(), 2, "woken by its first message");
    assert_eq!(kernel.hibernated_services(), 0);
    // Other args: `init` runs for them (and leaves a template of their own).
    let other = spawn_with(&kernel, "pure", b"b").await;
    assert_ne!(state_of(&kernel, other), Some("hibernated"));
    assert_eq!(pure.instances(), 3);
}

/// An `init` that called an import is never a template; nor is any with
/// `template_spawn` off.
#[tokio::test]
async fn an_impure_init_or_template_spawn_off_runs_init_every_time() {
    let (kernel, _, impure) = core_with_templates(true);
    for _ in 0..3 {
        let s = spawn_with(&kernel, "impure", b"").await;
        assert_ne!(state_of(&kernel, s), Some("hibernated"));
    }
    assert_eq!(impure.instances(), 3);
    let (kernel, pure, _) = core_with_templates(false);
    for _ in 0..3 {
        let s = spawn_with(&kernel, "pure", b"").await;
        assert_ne!(state_of(&kernel, s), Some("hibernated"));
    }
    assert_eq!(pure.instances(), 3);
    assert_eq!(kernel.template_spawns(), 0);
}

/// A service born hibernated and killed before any message ends without
/// ever being instantiated, and a call to it after is refused.
#[tokio::test]
async fn a_born_hibernated_service_killed_ends_without_an_instance() {
    let (kernel, pure, _) = core_with_templates(true);
    spawn_with(&kernel, "pure", b"").await;
    let born = spawn_with(&kernel, "pure", b"").await;
    assert!(kernel.kill(TenantId::SYSTEM, born));
    let gone = async {
        while kernel.service_info(born).is_some() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    within(gone).await;
    let c = client(&kernel);
    assert!(within(c.call(born, Vec::new())).await.is_err());
    assert_eq!(pure.instances(), 1);
    assert_eq!(kernel.hibernated_services(), 0);
}
