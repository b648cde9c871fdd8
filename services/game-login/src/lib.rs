//! `game_login`: accounts and logins for the example game, registered
//! cluster-wide as `login`.
//!
//! A login loads the account's record from the data service (in batches:
//! many logins at once make one call per 100 or per millisecond), checks
//! the password, and enters the player on the game node that the
//! consistent hash of its uid picks (group `game`), which starts the
//! player's service there.

use std::cell::RefCell;
use std::rc::Rc;

use game_proto::{
    DATA, DataRequest, Entered, GAME_GROUP, LOGIN, LoginRequest, ManagerRequest, Record, fnv1a,
};
use skyhost_sdk::batch::Batcher;
use skyhost_sdk::{Message, Reply, Service, cluster, export_service, group, self_address};

struct Login {
    /// Calls to the data service, batched once it is found.
    data: RefCell<Option<Batcher>>,
}

impl Login {
    async fn data(&self) -> Result<Batcher, String> {
        if let Some(b) = self.data.borrow().clone() {
            return Ok(b);
        }
        let (node, address) = cluster::find(DATA)
            .await
            .map_err(|e| format!("finding the data service: {e}"))?;
        let batcher = Batcher::new(&node, address);
        *self.data.borrow_mut() = Some(batcher.clone());
        Ok(batcher)
    }

    async fn ask_data<T: serde::de::DeserializeOwned>(
        &self,
        req: &DataRequest,
    ) -> Result<T, String> {
        let data = self.data().await?;
        let answer = data.call(req).await;
        if answer.is_err() {
            // The data node may have moved: look it up again next time.
            self.data.borrow_mut().take();
        }
        answer.map_err(|e| format!("data service: {e}"))
    }

    async fn register(&self, uid: u64, name: String, password: &str) -> Result<(), String> {
        let record = Record {
            uid,
            name,
            password_hash: fnv1a(password.as_bytes()),
            level: 1,
            xp: 0,
            battles: 0,
            team: None,
        };
        self.ask_data::<Result<(), String>>(&DataRequest::Create(record))
            .await?
    }

    async fn login(&self, uid: u64, password: &str) -> Result<Entered, String> {
        let record: Option<Record> = self.ask_data(&DataRequest::Load(uid)).await?;
        let record = record.ok_or_else(|| format!("no account {uid}"))?;
        if record.password_hash != fnv1a(password.as_bytes()) {
            return Err(format!("wrong password for {uid}"));
        }
        let entered: Result<Entered, String> =
            group::call(GAME_GROUP, &uid.to_le_bytes(), &ManagerRequest::Enter(uid))
                .await
                .map_err(|e| format!("entering the game: {e}"))?;
        entered
    }
}

impl Service for Login {
    fn init(_args: Vec<u8>) -> Result<Self, String> {
        cluster::register(LOGIN, self_address());
        Ok(Login {
            data: RefCell::new(None),
        })
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if !msg.is_request() {
            return Reply::none();
        }
        match msg.decode::<LoginRequest>() {
            Ok(LoginRequest::Register {
                uid,
                name,
                password,
            }) => Reply::value(&self.register(uid, name, &password).await),
            Ok(LoginRequest::Login { uid, password }) => {
                Reply::value(&self.login(uid, &password).await)
            }
            Err(e) => Reply::error(e.to_string()),
        }
    }
}

export_service!(Login);
