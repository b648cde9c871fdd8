//! `game_world`: a game node of the example game (seed §7.1), by spawn
//! arguments:
//! - `manager`: the player manager. It joins the cluster group `game`
//!   (consistent hash: login sends a uid to the same node every time) and
//!   starts one player service per player that enters, with the record it
//!   loaded from the data service; a player service that ends is forgotten.
//! - a postcard [`PlayerArgs`]: one player. It subscribes to the world chat
//!   (a channel of the chat node), says things on it, joins teams through
//!   the cluster-wide team service, fights on the battle nodes (group
//!   `battle`) and saves its record to the data service after each change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use game_proto::{
    BATTLE_GROUP, CHAT, ChatLine, DATA, DataRequest, Entered, Fight, GAME_GROUP, ManagerRequest,
    Outcome, PlayerArgs, PlayerRequest, Record, TEAM, TeamRequest,
};
use skyhost_sdk::cluster::Located;
use skyhost_sdk::group::{self, Policy};
use skyhost_sdk::multicast::Channel;
use skyhost_sdk::{
    Address, Message, Reply, Service, cluster, export_service, kind, monitor, self_address, spawn,
};

/// How long a battle may take before the player gives up on it.
const BATTLE_TIMEOUT: Duration = Duration::from_secs(5);

struct Manager {
    node: String,
    players: RefCell<HashMap<u64, Address>>,
    data: Located,
    chat: Located,
    /// The chat node and the world channel's id there, once asked.
    world: RefCell<Option<(String, u32)>>,
}

struct Player {
    record: RefCell<Record>,
    channel: Channel,
    /// Each chat line heard: its id and µs from publish to delivery.
    heard: RefCell<Vec<(u64, u64)>>,
    data: Located,
    team: Located,
}

enum World {
    Manager(Manager),
    Player(Player),
}

impl Manager {
    async fn world(&self) -> Result<(String, u32), String> {
        if let Some(w) = self.world.borrow().clone() {
            return Ok(w);
        }
        let (node, _) = self.chat.at().await.map_err(|e| format!("chat: {e}"))?;
        let id: u32 = self
            .chat
            .call(&())
            .await
            .map_err(|e| format!("chat: {e}"))?;
        *self.world.borrow_mut() = Some((node.clone(), id));
        Ok((node, id))
    }

    async fn enter(&self, uid: u64) -> Result<Entered, String> {
        let entered = |player: Address| Entered {
            node: self.node.clone(),
            player: player.0,
        };
        if let Some(&player) = self.players.borrow().get(&uid) {
            return Ok(entered(player));
        }
        let record: Option<Record> = self
            .data
            .call(&DataRequest::Load(uid))
            .await
            .map_err(|e| format!("data: {e}"))?;
        let record = record.ok_or_else(|| format!("no account {uid}"))?;
        let (chat_node, chat_channel) = self.world().await?;
        let args = PlayerArgs {
            record,
            chat_node,
            chat_channel,
        };
        let player = spawn("game_world", &args)
            .await
            .map_err(|e| format!("starting player {uid}: {e}"))?;
        monitor(player);
        // Another enter of the same player may have finished meanwhile.
        let mut players = self.players.borrow_mut();
        let player = *players.entry(uid).or_insert(player);
        Ok(entered(player))
    }

    async fn handle(&self, msg: Message) -> Reply {
        if msg.kind == kind::EXIT {
            self.players.borrow_mut().retain(|_, a| *a != msg.source);
            return Reply::none();
        }
        if !msg.is_request() {
            return Reply::none();
        }
        match msg.decode::<ManagerRequest>() {
            Ok(ManagerRequest::Enter(uid)) => Reply::value(&self.enter(uid).await),
            Ok(ManagerRequest::Online) => Reply::value(&(self.players.borrow().len() as u64)),
            Err(e) => Reply::error(e.to_string()),
        }
    }
}

/// Wall-clock µs, from WASI's clock (the runtime's `wall_time` counts ms),
/// so a chat line's delay across nodes of one machine is measured finely.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Player {
    async fn save(&self) -> Result<(), String> {
        let record = self.record.borrow().clone();
        self.data
            .call::<_, ()>(&DataRequest::Save(record))
            .await
            .map_err(|e| format!("saving: {e}"))
    }

    async fn join_team(&self, team: String) -> Result<u32, String> {
        let uid = self.record.borrow().uid;
        let size: u32 = self
            .team
            .call(&TeamRequest::Join {
                team: team.clone(),
                uid,
            })
            .await
            .map_err(|e| format!("team: {e}"))?;
        self.record.borrow_mut().team = Some(team);
        self.save().await?;
        Ok(size)
    }

    async fn fight(&self) -> Result<Outcome, String> {
        let (uid, level) = {
            let r = self.record.borrow();
            (r.uid, r.level)
        };
        let fight = postcard::to_allocvec(&Fight { uid, level }).map_err(|e| e.to_string())?;
        let answer = group::call_raw(
            BATTLE_GROUP,
            &uid.to_le_bytes(),
            &fight,
            Some(BATTLE_TIMEOUT),
        )
        .await
        .map_err(|e| format!("battle: {e}"))?;
        let outcome: Outcome = postcard::from_bytes(&answer).map_err(|e| e.to_string())?;
        {
            let mut r = self.record.borrow_mut();
            r.battles += 1;
            r.xp += outcome.xp;
            r.level = 1 + u32::try_from(r.xp / 100).unwrap_or(u32::MAX);
        }
        self.save().await?;
        Ok(outcome)
    }

    async fn handle(&self, msg: Message) -> Reply {
        if msg.kind == kind::MULTICAST {
            if let Ok(line) = msg.decode::<ChatLine>() {
                let delay = now_us().saturating_sub(line.sent_us);
                self.heard.borrow_mut().push((line.id, delay));
            }
            return Reply::none();
        }
        if !msg.is_request() {
            return Reply::none();
        }
        match msg.decode::<PlayerRequest>() {
            Ok(PlayerRequest::Chat { id, text }) => {
                let line = ChatLine {
                    id,
                    from: self.record.borrow().name.clone(),
                    text,
                    sent_us: now_us(),
                };
                let said = self
                    .channel
                    .publish(&line)
                    .map_err(|e| format!("world chat: {e:?}"));
                Reply::value(&said)
            }
            Ok(PlayerRequest::ChatLog) => Reply::value(&*self.heard.borrow()),
            Ok(PlayerRequest::JoinTeam(team)) => Reply::value(&self.join_team(team).await),
            Ok(PlayerRequest::Fight) => Reply::value(&self.fight().await),
            Ok(PlayerRequest::Record) => Reply::value(&*self.record.borrow()),
            Err(e) => Reply::error(e.to_string()),
        }
    }
}

impl Service for World {
    fn init(args: Vec<u8>) -> Result<Self, String> {
        if args == b"manager" {
            group::join(GAME_GROUP, self_address(), Policy::ConsistentHash)?;
            return Ok(World::Manager(Manager {
                node: cluster::node_name(),
                players: RefCell::new(HashMap::new()),
                data: Located::new(DATA),
                chat: Located::new(CHAT),
                world: RefCell::new(None),
            }));
        }
        let args: PlayerArgs = postcard::from_bytes(&args)
            .map_err(|e| format!("game_world: `manager` or player arguments: {e}"))?;
        let channel = Channel::cluster(&args.chat_node, args.chat_channel)
            .map_err(|e| format!("the world chat: {e:?}"))?;
        channel
            .subscribe()
            .map_err(|e| format!("the world chat: {e:?}"))?;
        Ok(World::Player(Player {
            record: RefCell::new(args.record),
            channel,
            heard: RefCell::new(Vec::new()),
            data: Located::new(DATA),
            team: Located::new(TEAM),
        }))
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        match &*self {
            World::Manager(m) => m.handle(msg).await,
            World::Player(p) => p.handle(msg).await,
        }
    }
}

export_service!(World);
