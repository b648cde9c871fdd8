package skyhost

// The canonical ABI of wit/service.wit's `batch-service` world, written by
// hand for the few types it uses (no bindings generator for Go runs here):
// the host's imports (wasmimport), the world's exports (wasmexport), and the
// memory the host writes into.

import (
	"encoding/binary"
	"unsafe"
)

// held keeps what cabi_realloc handed the host until the SDK takes it: Go's
// collector does not move memory, and must not free it meanwhile.
// Keys are addresses in the linear memory (32 bits, as the canonical ABI
// writes them; Go's own uintptr is 64 bits wide on wasm).
var held = map[uint32][]byte{}

// empty is where a zero-length allocation points.
var empty [8]byte

// addr is where p points in the linear memory.
func addr(p unsafe.Pointer) uint32 { return uint32(uintptr(p)) }

//go:wasmexport cabi_realloc
func cabiRealloc(old, oldSize, align, newSize uint32) uint32 {
	if newSize == 0 {
		return addr(unsafe.Pointer(&empty))
	}
	// Go's allocator aligns blocks of 8 bytes or more to 8, the most any
	// type of the WIT asks.
	buf := make([]byte, newSize, max(newSize, 8))
	if prev, ok := held[old]; ok {
		copy(buf, prev)
		delete(held, old)
	}
	at := addr(unsafe.Pointer(&buf[0]))
	held[at] = buf
	return at
}

// take returns the n bytes the host wrote at `at` (allocated by
// cabi_realloc), no longer held.
func take(at, n uint32) []byte {
	b, ok := held[at]
	if !ok || n == 0 {
		return nil
	}
	delete(held, at)
	return b[:n:n]
}

// takeString is take for text.
func takeString(at, n uint32) string {
	return string(take(at, n))
}

// ptr is where the bytes of b start (nil for none).
func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// sptr is where the bytes of s start.
func sptr(s string) unsafe.Pointer {
	return unsafe.Pointer(unsafe.StringData(s))
}

// retArea receives what an import returns through memory: up to 12 bytes,
// 4-aligned (a tag, then a payload at offset 4).
type retArea [4]uint32

func (r *retArea) p() unsafe.Pointer { return unsafe.Pointer(r) }
func (r *retArea) tag() uint8        { return uint8(r[0]) }
func (r *retArea) at(i int) uint32   { return r[i] }

func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }
func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

//go:wasmimport skyhost:service/runtime@0.1.4 self-address
func rtSelfAddress() uint32

//go:wasmimport skyhost:service/runtime@0.1.4 send
func rtSend(dest, kind, session uint32, p unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/runtime@0.1.4 call-now
func rtCallNow(dest uint32, p unsafe.Pointer, n uint32, ms uint32, ret unsafe.Pointer)

// callNowRet receives call-now's result<call-started, send-error>: the
// tag at byte 0; for ok the session at 4, then option<message> at 8 (its
// tag), the message's kind at 12, source at 16, session at 20 and payload
// (address, length) at 24 and 28; for err the send-error at 4.
type callNowRet [8]uint32

func (r *callNowRet) p() unsafe.Pointer { return unsafe.Pointer(r) }

// started is what call-now started: the session, and the answer when the
// callee gave it inside the call (else nil).
func (r *callNowRet) started() (uint32, *Msg, error) {
	if uint8(r[0]) != 0 {
		return 0, nil, SendError(uint8(r[1]))
	}
	if uint8(r[2]) == 0 {
		return r[1], nil, nil
	}
	return r[1], &Msg{
		Kind:    uint8(r[3]),
		Source:  Addr(r[4]),
		Session: r[5],
		Payload: take(r[6], r[7]),
	}, nil
}

//go:wasmimport skyhost:service/runtime@0.1.4 respond
func rtRespond(dest, session, isErr uint32, p unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/runtime@0.1.4 register
func rtRegister(p unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/runtime@0.1.4 unregister
func rtUnregister(p unsafe.Pointer, n uint32)

//go:wasmimport skyhost:service/runtime@0.1.4 query
func rtQuery(p unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/runtime@0.1.4 spawn
func rtSpawn(mp unsafe.Pointer, mn uint32, ap unsafe.Pointer, an uint32) uint32

//go:wasmimport skyhost:service/runtime@0.1.4 exit
func rtExit()

//go:wasmimport skyhost:service/runtime@0.1.4 kill
func rtKill(target uint32) uint32

//go:wasmimport skyhost:service/runtime@0.1.4 timeout
func rtTimeout(ms uint32) uint32

//go:wasmimport skyhost:service/runtime@0.1.4 monitor
func rtMonitor(target uint32)

//go:wasmimport skyhost:service/runtime@0.1.4 demonitor
func rtDemonitor(target uint32)

//go:wasmimport skyhost:service/runtime@0.1.4 now
func rtNow() uint64

//go:wasmimport skyhost:service/runtime@0.1.4 log
func rtLog(level uint32, p unsafe.Pointer, n uint32)

//go:wasmimport skyhost:service/harbor@0.1.4 id
func hbID() uint32

//go:wasmimport skyhost:service/harbor@0.1.4 globalname
func hbGlobalname(p unsafe.Pointer, n uint32, target uint32) uint32

//go:wasmimport skyhost:service/harbor@0.1.4 queryname
func hbQueryname(p unsafe.Pointer, n uint32, ms uint32) uint32

//go:wasmimport skyhost:service/cluster@0.1.4 node-name
func clNodeName(ret unsafe.Pointer)

// The service variant goes flat as (tag, name's address or the address,
// name's length): its middle word is a plain number.

//go:wasmimport skyhost:service/cluster@0.1.4 call
func clCall(np unsafe.Pointer, nn uint32, tag uint32, sp uint32, sn uint32, p unsafe.Pointer, n uint32, ms uint32) uint32

//go:wasmimport skyhost:service/cluster@0.1.4 send
func clSend(np unsafe.Pointer, nn uint32, tag uint32, sp uint32, sn uint32, p unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/cluster@0.1.4 register
func clRegister(p unsafe.Pointer, n uint32, target uint32)

//go:wasmimport skyhost:service/cluster@0.1.4 query
func clQuery(np unsafe.Pointer, nn uint32, p unsafe.Pointer, n uint32) uint32

//go:wasmimport skyhost:service/multicast@0.1.4 new
func mcNew(some, number uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/multicast@0.1.4 delete
func mcDelete(channel uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/multicast@0.1.4 publish
func mcPublish(channel uint32, p unsafe.Pointer, n uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/multicast@0.1.4 subscribe
func mcSubscribe(channel uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/multicast@0.1.4 unsubscribe
func mcUnsubscribe(channel uint32)

//go:wasmimport skyhost:service/groups@0.1.4 join
func grJoin(p unsafe.Pointer, n uint32, member uint32, policy uint32, ret unsafe.Pointer)

//go:wasmimport skyhost:service/groups@0.1.4 leave
func grLeave(p unsafe.Pointer, n uint32, member uint32)

//go:wasmimport skyhost:service/groups@0.1.4 call
func grCall(gp unsafe.Pointer, gn uint32, kp unsafe.Pointer, kn uint32, p unsafe.Pointer, n uint32, ms uint32) uint32

// initResult is what `init` returns through memory: a tag at 0, an error
// text's pointer at 4 and length at 8.
var initResult retArea

// initError keeps the error text until cabi_post_init.
var initError []byte

// lowerResult lowers a result<_, string> into r, keeping err's text in
// *text until the export's post-return; the address of r.
func lowerResult(r *retArea, text *[]byte, err error) uint32 {
	*r = retArea{}
	if err != nil {
		*text = []byte(err.Error())
		*r = retArea{1, addr(ptr(*text)), uint32(len(*text))}
	}
	return addr(r.p())
}

//go:wasmexport init
func exportInit(at, n uint32) uint32 {
	return lowerResult(&initResult, &initError, runInit(take(at, n)))
}

//go:wasmexport cabi_post_init
func exportPostInit(uint32) {
	initError = nil
}

//go:wasmexport dispatch-batch
func exportDispatchBatch(at, n uint32) {
	dispatch(take(at, n))
}

// The `state` interface (world `stateful-batch-service`): what carries a
// service across an upgrade.

// saveResult is what save-state returns through memory: the state's
// pointer and length.
var saveResult retArea

// savedState keeps the state until its post-return.
var savedState []byte

//go:wasmexport skyhost:service/state@0.1.4#save-state
func exportSaveState() uint32 {
	savedState = nil
	if saveFn != nil {
		savedState = saveFn()
	}
	saveResult = retArea{addr(ptr(savedState)), uint32(len(savedState))}
	return addr(saveResult.p())
}

//go:wasmexport cabi_post_skyhost:service/state@0.1.4#save-state
func exportPostSaveState(uint32) {
	savedState = nil
}

// loadResult is what load-state returns through memory, as init's.
var loadResult retArea

// loadError keeps the error text until its post-return.
var loadError []byte

//go:wasmexport skyhost:service/state@0.1.4#load-state
func exportLoadState(at, n uint32) uint32 {
	return lowerResult(&loadResult, &loadError, runLoad(take(at, n)))
}

//go:wasmexport cabi_post_skyhost:service/state@0.1.4#load-state
func exportPostLoadState(uint32) {
	loadError = nil
}
