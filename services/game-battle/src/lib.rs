//! `game_battle`: fights battles for the example game. Each battle service
//! joins the cluster group `battle` (least pending: a busy battle node gets
//! fewer new battles); a battle takes a few milliseconds of game time.

use std::rc::Rc;
use std::time::Duration;

use game_proto::{BATTLE_GROUP, Fight, Outcome, fnv1a};
use skyhost_sdk::group::{self, Policy};
use skyhost_sdk::{Message, Reply, Service, cluster, export_service, self_address, sleep};

struct Battle {
    node: String,
}

impl Service for Battle {
    fn init(_args: Vec<u8>) -> Result<Self, String> {
        group::join(BATTLE_GROUP, self_address(), Policy::LeastPending)?;
        Ok(Battle {
            node: cluster::node_name(),
        })
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if !msg.is_request() {
            return Reply::none();
        }
        let fight: Fight = match msg.decode() {
            Ok(f) => f,
            Err(e) => return Reply::error(e.to_string()),
        };
        // Rounds of the battle, as game time.
        sleep(Duration::from_millis(5)).await;
        let mut seed = fight.uid.to_le_bytes().to_vec();
        seed.extend_from_slice(&skyhost_sdk::now().as_nanos().to_le_bytes());
        let won = !fnv1a(&seed).is_multiple_of(3);
        let xp = if won { 10 + u64::from(fight.level) } else { 2 };
        Reply::value(&Outcome {
            won,
            xp,
            node: self.node.clone(),
        })
    }
}

export_service!(Battle);
