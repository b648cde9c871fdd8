//! `game_chat`: the example game's cross-server services (seed §7.2), by
//! spawn arguments:
//! - `chat`: makes the world chat channel (number 1) and registers
//!   cluster-wide as `chat`; any request to it answers the channel's id
//!   (`u32`) on this node; players on every game node subscribe to it
//!   through `multicast::cluster_channel`, and a publish from any of them
//!   goes through this node to every subscriber once;
//! - `team`: the team service, registered cluster-wide as `team`, found
//!   from any node with `cluster::find`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use game_proto::{CHAT, TEAM, TeamRequest, WORLD_CHANNEL};
use skyhost_sdk::multicast::Channel;
use skyhost_sdk::{Message, Reply, Service, cluster, export_service, self_address};

enum Role {
    Chat(Channel),
    Team(RefCell<BTreeMap<String, BTreeSet<u64>>>),
}

struct Chat {
    role: Role,
}

impl Service for Chat {
    fn init(args: Vec<u8>) -> Result<Self, String> {
        let role = match String::from_utf8_lossy(&args).trim() {
            "chat" => {
                let channel = Channel::with_number(WORLD_CHANNEL)
                    .map_err(|e| format!("the world channel: {e:?}"))?;
                cluster::register(CHAT, self_address());
                Role::Chat(channel)
            }
            "team" => {
                cluster::register(TEAM, self_address());
                Role::Team(RefCell::new(BTreeMap::new()))
            }
            other => return Err(format!("game_chat: unknown role `{other}` (chat or team)")),
        };
        Ok(Chat { role })
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if !msg.is_request() {
            return Reply::none();
        }
        let teams = match &self.role {
            Role::Chat(channel) => return Reply::value(&channel.0),
            Role::Team(teams) => teams,
        };
        match msg.decode::<TeamRequest>() {
            Ok(TeamRequest::Join { team, uid }) => {
                let mut teams = teams.borrow_mut();
                let members = teams.entry(team).or_default();
                members.insert(uid);
                Reply::value(&(members.len() as u32))
            }
            Ok(TeamRequest::Members(team)) => {
                let members: Vec<u64> = teams
                    .borrow()
                    .get(&team)
                    .map(|m| m.iter().copied().collect())
                    .unwrap_or_default();
                Reply::value(&members)
            }
            Err(e) => Reply::error(e.to_string()),
        }
    }
}

export_service!(Chat);
