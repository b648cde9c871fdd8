;; The WASI preview-1 functions a Go service imports, over skyhost's own
;; imports: Go's wasip1 runtime in place of the general preview-1 adapter.
;;
;; Why not that adapter: it keeps its state in memory it asks the module's
;; `cabi_realloc` for, at its first call. Go's runtime makes WASI calls
;; while it starts (`_initialize`: arguments, clocks, random), before any
;; Go function may run, so the adapter's allocation would enter Go too soon
;; and the start fails. Nor can it take memory with `memory.grow`: Go's
;; runtime holds all memory past its data as its own heap. This module
;; keeps no state: arguments and environment are empty, clocks come from
;; `runtime.now` and `runtime.wall-time`, random bytes from `wasi:random`,
;; standard output and error go to the node's log (a line per write; text
;; only: a write that is not UTF-8 traps), `proc_exit` traps (a panic ends
;; the service as a trap), and files, sockets and polling are refused
;; (EBADF, ENOSYS, ENOTSUP): a service has no file system.
(module
  (import "env" "memory" (memory 0))
  (import "skyhost:service/runtime@0.1.4" "log" (func $log (param i32 i32 i32)))
  (import "skyhost:service/runtime@0.1.4" "now" (func $now (result i64)))
  (import "skyhost:service/runtime@0.1.4" "wall-time" (func $wall (result i64)))
  (import "wasi:random/random@0.2.0" "get-random-u64" (func $random (result i64)))

  (func (export "args_sizes_get") (param i32 i32) (result i32)
    (i32.store (local.get 0) (i32.const 0))
    (i32.store (local.get 1) (i32.const 0))
    (i32.const 0))
  (func (export "args_get") (param i32 i32) (result i32) (i32.const 0))
  (func (export "environ_sizes_get") (param i32 i32) (result i32)
    (i32.store (local.get 0) (i32.const 0))
    (i32.store (local.get 1) (i32.const 0))
    (i32.const 0))
  (func (export "environ_get") (param i32 i32) (result i32) (i32.const 0))

  ;; Clock 0 is the wall clock (ms since the epoch), the others monotonic
  ;; (us since the node started); both in ns here.
  (func (export "clock_time_get") (param $id i32) (param $precision i64) (param $out i32) (result i32)
    (i64.store (local.get $out)
      (if (result i64) (i32.eqz (local.get $id))
        (then (i64.mul (call $wall) (i64.const 1000000)))
        (else (i64.mul (call $now) (i64.const 1000)))))
    (i32.const 0))
  (func (export "clock_res_get") (param $id i32) (param $out i32) (result i32)
    (i64.store (local.get $out)
      (if (result i64) (i32.eqz (local.get $id))
        (then (i64.const 1000000))
        (else (i64.const 1000))))
    (i32.const 0))

  (func (export "random_get") (param $buf i32) (param $len i32) (result i32)
    (local $v i64)
    (block $whole
      (loop $eight
        (br_if $whole (i32.lt_u (local.get $len) (i32.const 8)))
        (i64.store (local.get $buf) (call $random))
        (local.set $buf (i32.add (local.get $buf) (i32.const 8)))
        (local.set $len (i32.sub (local.get $len) (i32.const 8)))
        (br $eight)))
    (if (local.get $len)
      (then
        (local.set $v (call $random))
        (block $done
          (loop $byte
            (br_if $done (i32.eqz (local.get $len)))
            (i64.store8 (local.get $buf) (local.get $v))
            (local.set $v (i64.shr_u (local.get $v) (i64.const 8)))
            (local.set $buf (i32.add (local.get $buf) (i32.const 1)))
            (local.set $len (i32.sub (local.get $len) (i32.const 1)))
            (br $byte)))))
    (i32.const 0))

  ;; Standard output logs at info, standard error at warn.
  (func (export "fd_write") (param $fd i32) (param $iovs i32) (param $n i32) (param $written i32) (result i32)
    (local $level i32) (local $len i32) (local $total i32)
    (if (i32.eq (local.get $fd) (i32.const 1))
      (then (local.set $level (i32.const 2)))
      (else
        (if (i32.eq (local.get $fd) (i32.const 2))
          (then (local.set $level (i32.const 3)))
          (else (return (i32.const 8))))))
    (block $done
      (loop $each
        (br_if $done (i32.eqz (local.get $n)))
        (local.set $len (i32.load offset=4 (local.get $iovs)))
        (if (local.get $len)
          (then (call $log (local.get $level) (i32.load (local.get $iovs)) (local.get $len))))
        (local.set $total (i32.add (local.get $total) (local.get $len)))
        (local.set $iovs (i32.add (local.get $iovs) (i32.const 8)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $each)))
    (i32.store (local.get $written) (local.get $total))
    (i32.const 0))

  (func (export "proc_exit") (param i32) (unreachable))
  (func (export "sched_yield") (result i32) (i32.const 0))
  (func (export "poll_oneoff") (param i32 i32 i32 i32) (result i32) (i32.const 58))

  (func (export "fd_advise") (param i32 i64 i64 i32) (result i32) (i32.const 8))
  (func (export "fd_allocate") (param i32 i64 i64) (result i32) (i32.const 8))
  (func (export "fd_close") (param i32) (result i32) (i32.const 8))
  (func (export "fd_datasync") (param i32) (result i32) (i32.const 8))
  (func (export "fd_fdstat_get") (param i32 i32) (result i32) (i32.const 8))
  (func (export "fd_fdstat_set_flags") (param i32 i32) (result i32) (i32.const 8))
  (func (export "fd_fdstat_set_rights") (param i32 i64 i64) (result i32) (i32.const 8))
  (func (export "fd_filestat_get") (param i32 i32) (result i32) (i32.const 8))
  (func (export "fd_filestat_set_size") (param i32 i64) (result i32) (i32.const 8))
  (func (export "fd_filestat_set_times") (param i32 i64 i64 i32) (result i32) (i32.const 8))
  (func (export "fd_pread") (param i32 i32 i32 i64 i32) (result i32) (i32.const 8))
  (func (export "fd_prestat_get") (param i32 i32) (result i32) (i32.const 8))
  (func (export "fd_prestat_dir_name") (param i32 i32 i32) (result i32) (i32.const 8))
  (func (export "fd_pwrite") (param i32 i32 i32 i64 i32) (result i32) (i32.const 8))
  (func (export "fd_read") (param i32 i32 i32 i32) (result i32) (i32.const 8))
  (func (export "fd_readdir") (param i32 i32 i32 i64 i32) (result i32) (i32.const 8))
  (func (export "fd_renumber") (param i32 i32) (result i32) (i32.const 8))
  (func (export "fd_seek") (param i32 i64 i32 i32) (result i32) (i32.const 8))
  (func (export "fd_sync") (param i32) (result i32) (i32.const 8))
  (func (export "fd_tell") (param i32 i32) (result i32) (i32.const 8))
  (func (export "path_create_directory") (param i32 i32 i32) (result i32) (i32.const 8))
  (func (export "path_filestat_get") (param i32 i32 i32 i32 i32) (result i32) (i32.const 8))
  (func (export "path_filestat_set_times") (param i32 i32 i32 i32 i64 i64 i32) (result i32) (i32.const 8))
  (func (export "path_link") (param i32 i32 i32 i32 i32 i32 i32) (result i32) (i32.const 8))
  (func (export "path_open") (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32) (i32.const 8))
  (func (export "path_readlink") (param i32 i32 i32 i32 i32 i32) (result i32) (i32.const 8))
  (func (export "path_remove_directory") (param i32 i32 i32) (result i32) (i32.const 8))
  (func (export "path_rename") (param i32 i32 i32 i32 i32 i32) (result i32) (i32.const 8))
  (func (export "path_symlink") (param i32 i32 i32 i32 i32) (result i32) (i32.const 8))
  (func (export "path_unlink_file") (param i32 i32 i32) (result i32) (i32.const 8))
  (func (export "sock_accept") (param i32 i32 i32) (result i32) (i32.const 52))
  (func (export "sock_recv") (param i32 i32 i32 i32 i32 i32) (result i32) (i32.const 52))
  (func (export "sock_send") (param i32 i32 i32 i32 i32) (result i32) (i32.const 52))
  (func (export "sock_shutdown") (param i32 i32) (result i32) (i32.const 52))
  (func (export "proc_raise") (param i32) (result i32) (i32.const 52))
)
