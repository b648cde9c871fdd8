//! `demo`: shows what a skyhost service does, in its log.
//!
//! On start it spawns three `echo` services (naming the first `.echo`),
//! registers itself as `.demo`, then at the same time calls each echo a few
//! times (a forked task) and ticks a 500 ms timer three times. Then it keeps
//! running and answers every request with a one-line text status (utf-8).
//!
//! It keeps its status across upgrades (a [`Stateful`] service): rebuild it
//! and `upgrade .demo <demo.wasm>` on the console, and the new version
//! carries on from the same counts.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skyhost_sdk::{
    Address, Message, Reply, Service, Stateful, call_raw, export_service, fork, info, now, query,
    register, self_address, sleep, spawn_raw, warn,
};

/// How many echo services the demo starts.
const ECHOES: usize = 3;
/// How many calls it makes to each echo.
const CALLS_PER_ECHO: u32 = 3;
/// How many timer ticks it waits for.
const TICKS: u32 = 3;

/// What the demo did so far, for its status line.
struct Demo {
    echoes: RefCell<Vec<Address>>,
    calls: Cell<u32>,
    ticks: Cell<u32>,
    phase: RefCell<String>,
}

/// What the demo carries across an upgrade.
#[derive(Serialize, Deserialize)]
struct DemoState {
    echoes: Vec<u32>,
    calls: u32,
    ticks: u32,
    phase: String,
}

impl Service for Demo {
    fn init(_args: Vec<u8>) -> Result<Self, String> {
        info!("demo {}: init", self_address());
        Ok(Demo {
            echoes: RefCell::new(Vec::new()),
            calls: Cell::new(0),
            ticks: Cell::new(0),
            phase: RefCell::new("starting".into()),
        })
    }

    async fn start(self: Rc<Self>) {
        info!("demo: spawning {ECHOES} echo services");
        self.set_phase("spawning");
        for i in 0..ECHOES {
            let args: &[u8] = if i == 0 { b".echo" } else { b"" };
            match spawn_raw("echo", args).await {
                Ok(echo) => {
                    info!("demo: echo #{i} started at {echo}");
                    self.echoes.borrow_mut().push(echo);
                }
                Err(e) => warn!("demo: spawning echo #{i} failed: {e}"),
            }
        }
        match register(".demo") {
            Ok(()) => info!("demo: registered as .demo"),
            Err(e) => warn!("demo: could not register .demo: {e}"),
        }
        match query(".echo") {
            Some(echo) => info!("demo: the name .echo points at {echo}"),
            None => warn!("demo: nobody holds .echo"),
        }

        self.set_phase("calling and ticking");
        info!("demo: calling each echo {CALLS_PER_ECHO} times while a timer ticks");
        fork(Rc::clone(&self).call_echoes());
        for tick in 1..=TICKS {
            sleep(Duration::from_millis(500)).await;
            self.ticks.set(tick);
            info!("demo: tick {tick}/{TICKS} at {} ms", now().as_millis());
        }
        self.set_phase("idle");
        info!("demo: done; still running, answers requests with its status (try calling .demo)");
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if !msg.is_request() {
            info!("demo: got a kind {} message from {}", msg.kind, msg.source);
            return Reply::none();
        }
        Reply::bytes(self.status().into_bytes())
    }
}

impl Stateful for Demo {
    type State = DemoState;

    fn save(&self) -> DemoState {
        DemoState {
            echoes: self.echoes.borrow().iter().map(|a| a.0).collect(),
            calls: self.calls.get(),
            ticks: self.ticks.get(),
            phase: self.phase.borrow().clone(),
        }
    }

    fn restore(state: DemoState) -> Result<Self, String> {
        let demo = Demo {
            echoes: RefCell::new(state.echoes.into_iter().map(Address).collect()),
            calls: Cell::new(state.calls),
            ticks: Cell::new(state.ticks),
            phase: RefCell::new(state.phase),
        };
        info!("demo: upgraded; carried over: {}", demo.status());
        Ok(demo)
    }
}

impl Demo {
    fn set_phase(&self, phase: &str) {
        *self.phase.borrow_mut() = phase.to_string();
    }

    /// Calls every echo a few times, logging each round trip.
    async fn call_echoes(self: Rc<Self>) {
        let echoes = self.echoes.borrow().clone();
        for round in 1..=CALLS_PER_ECHO {
            for &echo in &echoes {
                let text = format!("hello #{round}");
                let started = now();
                match call_raw(echo, text.as_bytes()).await {
                    Ok(back) => {
                        self.calls.set(self.calls.get() + 1);
                        info!(
                            "demo: {echo} echoed {:?} in {} us",
                            String::from_utf8_lossy(&back),
                            (now() - started).as_micros()
                        );
                    }
                    Err(e) => warn!("demo: call to {echo} failed: {e}"),
                }
            }
        }
        info!("demo: {} echo calls answered", self.calls.get());
    }

    /// One line saying what the demo did.
    fn status(&self) -> String {
        let echoes: Vec<String> = self.echoes.borrow().iter().map(|a| a.to_string()).collect();
        format!(
            "demo {}: {}; echoes [{}]; {} calls answered; {}/{TICKS} ticks",
            self_address(),
            self.phase.borrow(),
            echoes.join(", "),
            self.calls.get(),
            self.ticks.get(),
        )
    }
}

export_service!(Demo, stateful);
