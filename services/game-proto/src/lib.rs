//! The example game's messages (seed §7): what the login, game, data,
//! battle, chat and team services ask and answer, encoded with postcard.
//! Postcard numbers enum variants: add new ones at the end.
//!
//! ```text
//!  client ─ Login ─> login ─ Load/Create ─> data
//!                          └ group "game" (consistent hash of uid) ─ Enter ─> manager (game node)
//!                                                                     └ spawns one player per uid
//!  client ─ Chat/JoinTeam/Fight/Record ─> player ─ world chat channel (chat node, cluster-wide)
//!                                                ├ cluster find "team" ─ Join ─> team
//!                                                ├ group "battle" (least pending) ─ Fight ─> battle
//!                                                └ batched Save ─> data
//! ```

use serde::{Deserialize, Serialize};

/// The group of the game nodes' player managers (consistent hash of uid).
pub const GAME_GROUP: &str = "game";
/// The group of the battle services (least pending).
pub const BATTLE_GROUP: &str = "battle";
/// The cluster-wide name of the data service.
pub const DATA: &str = "data";
/// The cluster-wide name of the login service.
pub const LOGIN: &str = "login";
/// The cluster-wide name of the chat service (owner of the world channel).
pub const CHAT: &str = "chat";
/// The cluster-wide name of the team service.
pub const TEAM: &str = "team";
/// The number of the world chat channel on the chat node.
pub const WORLD_CHANNEL: u32 = 1;

/// A player's saved record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The player's id.
    pub uid: u64,
    /// Shown in chat.
    pub name: String,
    /// FNV-1a of the password.
    pub password_hash: u64,
    /// Level, from experience.
    pub level: u32,
    /// Experience from battles won.
    pub xp: u64,
    /// Battles fought.
    pub battles: u32,
    /// The team joined, if any.
    pub team: Option<String>,
}

/// FNV-1a, 64 bits: the same on every node and build.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Requests to the data service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataRequest {
    /// The record of `uid`: answers `Option<Record>`.
    Load(u64),
    /// A new record; answers `Result<(), String>` (an error if it exists).
    Create(Record),
    /// Replaces a record; answers `()`.
    Save(Record),
    /// How many records it keeps; answers `u64`.
    Count,
}

/// Requests to the login service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoginRequest {
    /// Makes an account; answers `Result<(), String>`.
    Register {
        /// The new player's id.
        uid: u64,
        /// Shown in chat.
        name: String,
        /// Its password.
        password: String,
    },
    /// Logs in; answers `Result<Entered, String>`.
    Login {
        /// The player's id.
        uid: u64,
        /// Its password.
        password: String,
    },
}

/// Where a logged-in player lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entered {
    /// The game node.
    pub node: String,
    /// The player service's address there.
    pub player: u32,
}

/// Requests to a game node's player manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerRequest {
    /// Starts (or finds) the player service of `uid`; answers `Result<Entered, String>`.
    Enter(u64),
    /// How many players it runs; answers `u64`.
    Online,
}

/// Requests to a player service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlayerRequest {
    /// Says `text` on the world chat with the id `id`; answers `Result<(), String>`.
    Chat {
        /// Picked by the sender, to count deliveries.
        id: u64,
        /// What is said.
        text: String,
    },
    /// Each world chat message it received, in order, as its id and the
    /// microseconds from publish to delivery; answers `Vec<(u64, u64)>`.
    ChatLog,
    /// Joins `team` through the cluster-wide team service; answers
    /// `Result<u32, String>` (the team's size).
    JoinTeam(String),
    /// Fights a battle on a battle node; answers `Result<Outcome, String>`.
    Fight,
    /// Its record; answers `Record`.
    Record,
}

/// A world chat message, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// Picked by the sender.
    pub id: u64,
    /// Who said it.
    pub from: String,
    /// What was said.
    pub text: String,
    /// Wall-clock time of the publish, in µs since the epoch.
    pub sent_us: u64,
}

/// What a player manager spawns a player service with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerArgs {
    /// The player's record, as loaded.
    pub record: Record,
    /// The node that owns the world chat channel.
    pub chat_node: String,
    /// The channel's id there.
    pub chat_channel: u32,
}

/// Requests to a battle service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fight {
    /// The player.
    pub uid: u64,
    /// Its level.
    pub level: u32,
}

/// How a battle ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether the player won.
    pub won: bool,
    /// Experience gained.
    pub xp: u64,
    /// The battle node that ran it.
    pub node: String,
}

/// Requests to the team service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TeamRequest {
    /// `uid` joins `team`; answers the team's size (`u32`).
    Join {
        /// The team.
        team: String,
        /// The player.
        uid: u64,
    },
    /// The members of `team`; answers `Vec<u64>`.
    Members(String),
}
