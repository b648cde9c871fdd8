//! `game_data`: the example game's player records, kept in a file in the
//! tenant's granted directory (`/data/players.log`, or the path in the
//! spawn arguments) so they survive a restart of the node.
//!
//! The file is a log: one frame per change, `[length u32 le][postcard
//! Record]`, read back whole at start (a torn last frame, from a crash in
//! the middle of a write, is dropped). Registered cluster-wide as `data`;
//! answers [`DataRequest`]s one by one or in batches (`skyhost_sdk::batch`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::rc::Rc;

use game_proto::{DATA, DataRequest, Record};
use skyhost_sdk::{Message, Reply, Service, batch, cluster, export_service, self_address};

struct Data {
    records: RefCell<HashMap<u64, Record>>,
    log: RefCell<std::fs::File>,
}

/// Every record in the log at `path`, the last frame of each uid winning.
fn read_log(path: &str) -> Result<HashMap<u64, Record>, String> {
    let mut bytes = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| format!("read {path}: {e}"))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("open {path}: {e}")),
    }
    let mut records = HashMap::new();
    let mut rest = bytes.as_slice();
    while let Some((len, body)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let Some((frame, next)) = body.split_at_checked(len) else {
            break;
        };
        let Ok(record) = postcard::from_bytes::<Record>(frame) else {
            break;
        };
        records.insert(record.uid, record);
        rest = next;
    }
    Ok(records)
}

impl Data {
    fn append(&self, record: &Record) -> Result<(), String> {
        let body = postcard::to_allocvec(record).map_err(|e| e.to_string())?;
        let len = u32::try_from(body.len()).map_err(|_| "record too large".to_string())?;
        let mut frame = len.to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.log
            .borrow_mut()
            .write_all(&frame)
            .map_err(|e| format!("write the log: {e}"))
    }

    fn answer(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let request: DataRequest = postcard::from_bytes(payload).map_err(|e| e.to_string())?;
        match request {
            DataRequest::Load(uid) => encode(&self.records.borrow().get(&uid).cloned()),
            DataRequest::Create(record) => {
                let created = if self.records.borrow().contains_key(&record.uid) {
                    Err(format!("player {} exists", record.uid))
                } else {
                    self.append(&record)?;
                    self.records.borrow_mut().insert(record.uid, record);
                    Ok(())
                };
                encode(&created)
            }
            DataRequest::Save(record) => {
                self.append(&record)?;
                self.records.borrow_mut().insert(record.uid, record);
                encode(&())
            }
            DataRequest::Count => encode(&(self.records.borrow().len() as u64)),
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(value).map_err(|e| e.to_string())
}

impl Service for Data {
    fn init(args: Vec<u8>) -> Result<Self, String> {
        let args = String::from_utf8_lossy(&args);
        let path = match args.trim() {
            "" => "/data/players.log",
            p => p,
        };
        let records = read_log(path)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("open {path}: {e}"))?;
        skyhost_sdk::info!("{} player records in {path}", records.len());
        cluster::register(DATA, self_address());
        Ok(Data {
            records: RefCell::new(records),
            log: RefCell::new(log),
        })
    }

    async fn handle(self: Rc<Self>, msg: Message) -> Reply {
        if !msg.is_request() {
            return Reply::none();
        }
        if batch::is_batch(&msg.payload) {
            let me = self.clone();
            let served = batch::serve(&msg.payload, move |call| {
                let answer = me.answer(&call);
                async move { answer }
            })
            .await;
            return match served {
                Ok(bytes) => Reply::bytes(bytes),
                Err(e) => Reply::error(e.to_string()),
            };
        }
        match self.answer(&msg.payload) {
            Ok(bytes) => Reply::bytes(bytes),
            Err(e) => Reply::error(e),
        }
    }
}

export_service!(Data);
