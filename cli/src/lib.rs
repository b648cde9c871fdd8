//! The `skyhost` command's side of the project, apart from the library a
//! node is built from: TLS certificates for a fleet (`skyhost cert`), fleets
//! of node processes (`skyhost fleet`) and the
//! outside programs tests and benchmarks run (Debian tools, a throwaway
//! etcd). The command itself (`main.rs`) and `skyhost bench` (`bench/`)
//! build on these and on the `skyhost` library's public API only.

pub mod cert;
pub mod fleet;
pub mod tools;
