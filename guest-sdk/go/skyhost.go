// Package skyhost writes skyhost services in Go (docs/languages.md).
//
// A service registers its handler in an init function:
//
//	func init() {
//		skyhost.Serve(func(m *skyhost.Msg) ([]byte, error) {
//			return m.Payload, nil // a request's return value answers it
//		})
//	}
//
// Each message runs its handler in a goroutine of its own. Call, Sleep,
// Spawn and the other calls that wait for an answer block only that
// goroutine: the service takes its next messages meanwhile, and the
// goroutine goes on when its answer comes (Go's wasip1 runtime runs other
// goroutines while an export runs, so a batch's export returns once every
// handler has finished or waits on a session). A handler must wait only
// through this package: a goroutine blocked on anything else (a channel no
// handler will send on) keeps the batch from ending, and the node's CPU
// budget then ends the service.
package skyhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"unsafe"
)

// Addr is a service's address: (local id << 8) | harbor id.
type Addr uint32

// Message kinds (wit: types.kind).
const (
	KindText      uint8 = 0
	KindResponse  uint8 = 1
	KindMulticast uint8 = 2
	KindExit      uint8 = 3
	KindError     uint8 = 7
	KindRequest   uint8 = 10
	KindUser      uint8 = 16
)

// Msg is one message. Its payload is the handler's to keep.
type Msg struct {
	Kind    uint8
	Source  Addr
	Session uint32
	Payload []byte
	// Trace is the message's trace id (0: not traced).
	Trace uint64
}

// SendError says why the host refused a message (wit: types.send-error).
type SendError uint8

// The send errors.
const (
	UnknownAddress SendError = iota
	Overloaded
	TooLarge
	ReservedKind
	NodeDown
)

var sendErrorNames = [...]string{"unknown-address", "overloaded", "too-large", "reserved-kind", "node-down"}

func (e SendError) Error() string {
	if int(e) < len(sendErrorNames) {
		return sendErrorNames[e]
	}
	return fmt.Sprintf("send error %d", uint8(e))
}

// CallError is a call's answer of kind error: its cause (wit:
// types.error-cause) and detail.
type CallError struct {
	Cause  uint8
	Detail string
}

func (e *CallError) Error() string {
	return fmt.Sprintf("call failed (cause %d): %s", e.Cause, e.Detail)
}

// NameError says why a name was not registered (wit: types.name-error).
type NameError uint8

// The name errors.
const (
	NameInvalid NameError = iota
	NameTaken
	NameUnavailable
)

func (e NameError) Error() string {
	return [...]string{"invalid name", "name taken", "name unavailable"}[min(int(e), 2)]
}

// Handler handles one message. For a request, what it returns answers it
// (an error answers with the error's text); for other kinds it is ignored.
type Handler func(m *Msg) ([]byte, error)

var (
	handler Handler
	initFn  func(args []byte) error
	saveFn  func() []byte
	loadFn  func(state []byte) error
)

// Serve sets the service's handler (call it from an init function).
func Serve(h Handler) { handler = h }

// OnInit sets what runs with the spawn arguments before the first message;
// an error fails the spawn. It must not wait on a session (start a
// goroutine with Go for that).
func OnInit(f func(args []byte) error) { initFn = f }

// OnSave sets what hands this version's state to the next one when the
// service is upgraded (called between batches; it must not change the
// service). Without it, nothing is handed over, and a hibernating service
// is kept as an image of its memory.
func OnSave(f func() []byte) { saveFn = f }

// OnLoad sets what takes over the state the previous version saved, in
// place of the OnInit function; an error cancels the upgrade (the previous
// version runs on).
func OnLoad(f func(state []byte) error) { loadFn = f }

func runLoad(state []byte) error {
	if loadFn == nil {
		if len(state) > 0 {
			return errors.New("this version has no OnLoad to take the previous version's state")
		}
		return runInit(nil)
	}
	err := loadFn(state)
	settle()
	collectIfDue()
	return err
}

func runInit(args []byte) error {
	if initFn == nil {
		return nil
	}
	err := initFn(args)
	settle()
	collectIfDue()
	return err
}

// The collector runs only where the service may call the host: between
// batches. Left to itself it would start from an allocation, and the
// allocations of cabi_realloc run while the host lowers a list into the
// guest, when the component model forbids calling out (the collector
// reads the clock): "cannot leave component instance". So it is off, and
// a batch's end collects once as much was allocated since the last
// collection as was live after it (GOGC=100's pace), at least 4 MiB.
func init() {
	debug.SetGCPercent(-1)
	runtime.MemProfileRate = 0
}

var (
	gcSamples  = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/gc/heap/live:bytes"}}
	allocsAtGC uint64
	gcEvery    uint64 = 4 << 20
)

func collectIfDue() {
	metrics.Read(gcSamples[:1])
	allocs := gcSamples[0].Value.Uint64()
	if allocs-allocsAtGC < gcEvery {
		return
	}
	runtime.GC()
	metrics.Read(gcSamples)
	allocsAtGC = gcSamples[0].Value.Uint64()
	gcEvery = max(4<<20, gcSamples[1].Value.Uint64())
}

// The goroutines of this package that can run: handlers not waiting on a
// session. A batch's export returns when there are none.
var running int

// waits maps each session a goroutine waits on to where its answer goes.
var waits = map[uint32]chan *Msg{}

// Go runs f in a goroutine the service waits for like a handler's: it may
// Call, Sleep and so on.
func Go(f func()) {
	running++
	go func() {
		defer func() { running-- }()
		f()
	}()
}

// settle lets every goroutine run until it ends or waits on a session.
func settle() {
	for running > 0 {
		runtime.Gosched()
	}
}

func dispatch(b []byte) {
	var count uint32
	if len(b) >= 8 {
		count = le32(b)
	}
	for i := uint32(0); i < count; i++ {
		at := 8 + int(i)*32
		if at+32 > len(b) {
			break
		}
		h := b[at : at+32]
		offset, n := int(le32(h[12:])), int(le32(h[16:]))
		if offset > len(b) || n > len(b)-offset {
			break
		}
		m := &Msg{
			Kind:    h[0],
			Source:  Addr(le32(h[4:])),
			Session: le32(h[8:]),
			Payload: b[offset : offset+n : offset+n],
			Trace:   le64(h[24:]),
		}
		if m.Kind == KindResponse || m.Kind == KindError {
			if ch, ok := waits[m.Session]; ok {
				delete(waits, m.Session)
				running++
				ch <- m
				continue
			}
		}
		if handler != nil {
			Go(func() { handle(m) })
		}
	}
	settle()
	collectIfDue()
}

func handle(m *Msg) {
	reply, err := handler(m)
	if m.Kind != KindRequest {
		return
	}
	if err != nil {
		_ = RespondError(m.Source, m.Session, err.Error())
	} else {
		_ = Respond(m.Source, m.Session, reply)
	}
}

// wait blocks this goroutine until the answer to session comes.
func wait(session uint32) *Msg {
	ch := make(chan *Msg, 1)
	waits[session] = ch
	running--
	return <-ch
}

// answer is what a call's answer says: the reply, or a *CallError.
func answer(m *Msg) ([]byte, error) {
	if m.Kind == KindResponse {
		return m.Payload, nil
	}
	e := &CallError{Cause: 255}
	if len(m.Payload) > 0 {
		e.Cause = m.Payload[0]
		e.Detail = string(m.Payload[1:])
	}
	return nil, e
}

// Self is this service's own address.
func Self() Addr { return Addr(rtSelfAddress()) }

// textResult is a result<_, string> the host wrote into r.
func textResult(r *retArea) error {
	if r.tag() == 0 {
		return nil
	}
	return errors.New(takeString(r.at(1), r.at(2)))
}

// addressAnswer waits for session, whose answer is an address (what says
// which call it answers).
func addressAnswer(session uint32, what string) (Addr, error) {
	reply, err := answer(wait(session))
	if err != nil {
		return 0, err
	}
	if len(reply) < 4 {
		return 0, errors.New(what + " answered without an address")
	}
	return Addr(le32(reply)), nil
}

func sent(r *retArea) error {
	if r.tag() == 0 {
		return nil
	}
	return SendError(uint8(r.at(1)))
}

// Send sends a message (kind KindText or >= KindUser).
func Send(dest Addr, kind uint8, payload []byte) error {
	var r retArea
	rtSend(uint32(dest), uint32(kind), 0, ptr(payload), uint32(len(payload)), r.p())
	runtime.KeepAlive(payload)
	return sent(&r)
}

// Call sends a request to dest and blocks this goroutine until it answers:
// the reply, a SendError, or a *CallError. An idle callee on this node may
// run inside the call (call-now) and answer at once: the goroutine then
// does not block.
func Call(dest Addr, payload []byte) ([]byte, error) {
	return CallTimeout(dest, payload, 0)
}

// CallTimeout is Call with a deadline: past ms milliseconds (0: none) the
// call ends with a *CallError (timeout).
func CallTimeout(dest Addr, payload []byte, ms uint32) ([]byte, error) {
	var r callNowRet
	rtCallNow(uint32(dest), ptr(payload), uint32(len(payload)), ms, r.p())
	runtime.KeepAlive(payload)
	session, now, err := r.started()
	if err != nil {
		return nil, err
	}
	if now != nil {
		return answer(now)
	}
	return answer(wait(session))
}

func respond(dest Addr, session uint32, isErr uint32, data unsafe.Pointer, n int) error {
	var r retArea
	rtRespond(uint32(dest), session, isErr, data, uint32(n), r.p())
	return sent(&r)
}

// Respond answers a request (a handler's return value does this for it).
func Respond(dest Addr, session uint32, reply []byte) error {
	err := respond(dest, session, 0, ptr(reply), len(reply))
	runtime.KeepAlive(reply)
	return err
}

// RespondError answers a request with an error text.
func RespondError(dest Addr, session uint32, text string) error {
	err := respond(dest, session, 1, sptr(text), len(text))
	runtime.KeepAlive(text)
	return err
}

// Sleep blocks this goroutine for ms milliseconds.
func Sleep(ms uint32) {
	wait(rtTimeout(ms))
}

// Spawn starts a service of module with args and blocks this goroutine
// until its init has run: its address, or a *CallError.
func Spawn(module string, args []byte) (Addr, error) {
	session := rtSpawn(sptr(module), uint32(len(module)), ptr(args), uint32(len(args)))
	runtime.KeepAlive(module)
	runtime.KeepAlive(args)
	return addressAnswer(session, "spawn")
}

// Register gives this service a name (`.name`: this node only).
func Register(name string) error {
	var r retArea
	rtRegister(sptr(name), uint32(len(name)), r.p())
	runtime.KeepAlive(name)
	if r.tag() == 0 {
		return nil
	}
	return NameError(uint8(r.at(1)))
}

// Unregister gives a name up.
func Unregister(name string) {
	rtUnregister(sptr(name), uint32(len(name)))
	runtime.KeepAlive(name)
}

// Query is the address holding name, if any.
func Query(name string) (Addr, bool) {
	var r retArea
	rtQuery(sptr(name), uint32(len(name)), r.p())
	runtime.KeepAlive(name)
	return Addr(r.at(1)), r.tag() == 1
}

// Monitor asks for a KindExit message when target ends.
func Monitor(target Addr) { rtMonitor(uint32(target)) }

// Demonitor takes a Monitor back.
func Demonitor(target Addr) { rtDemonitor(uint32(target)) }

// Kill ends target; false if there was none.
func Kill(target Addr) bool { return rtKill(uint32(target)) != 0 }

// Exit ends this service after the current batch.
func Exit() { rtExit() }

// Now is the host's monotonic clock, in microseconds.
func Now() uint64 { return rtNow() }

// Log writes an info line to the node's log.
func Log(text string) {
	rtLog(2, sptr(text), uint32(len(text)))
	runtime.KeepAlive(text)
}

// Harbor: this node's id, and global names across the harbor.

// HarborID is this node's harbor id (0: a single node).
func HarborID() uint8 { return uint8(hbID()) }

// GlobalName names target across the harbor (blocks until the master
// answers).
func GlobalName(name string, target Addr) error {
	session := hbGlobalname(sptr(name), uint32(len(name)), uint32(target))
	runtime.KeepAlive(name)
	_, err := answer(wait(session))
	return err
}

// QueryName is the address a harbor-wide name stands for, waiting up to ms
// milliseconds for it to be registered.
func QueryName(name string, ms uint32) (Addr, error) {
	session := hbQueryname(sptr(name), uint32(len(name)), ms)
	runtime.KeepAlive(name)
	return addressAnswer(session, "queryname")
}

// Cluster: named nodes.

// NodeName is this node's name in the cluster ("" when in none).
func NodeName() string {
	var r retArea
	clNodeName(r.p())
	return takeString(r.at(0), r.at(1))
}

// Service names a service on another cluster node: by name, or by address.
type Service struct {
	Name    string
	Address Addr
}

// flat is the variant as the canonical ABI passes it; the caller keeps
// s.Name alive over the call.
func (s Service) flat() (uint32, uint32, uint32) {
	if s.Name != "" {
		return 0, addr(sptr(s.Name)), uint32(len(s.Name))
	}
	return 1, uint32(s.Address), 0
}

// ClusterCall calls service on node and blocks this goroutine until it
// answers (ms 0: as long as the link lives).
func ClusterCall(node string, service Service, payload []byte, ms uint32) ([]byte, error) {
	tag, sp, sn := service.flat()
	session := clCall(sptr(node), uint32(len(node)), tag, sp, sn, ptr(payload), uint32(len(payload)), ms)
	runtime.KeepAlive(node)
	runtime.KeepAlive(service)
	runtime.KeepAlive(payload)
	return answer(wait(session))
}

// ClusterSend sends to service on node (it arrives as a KindText message).
func ClusterSend(node string, service Service, payload []byte) error {
	var r retArea
	tag, sp, sn := service.flat()
	clSend(sptr(node), uint32(len(node)), tag, sp, sn, ptr(payload), uint32(len(payload)), r.p())
	runtime.KeepAlive(node)
	runtime.KeepAlive(service)
	runtime.KeepAlive(payload)
	return textResult(&r)
}

// ClusterRegister makes target known to other nodes as name.
func ClusterRegister(name string, target Addr) {
	clRegister(sptr(name), uint32(len(name)), uint32(target))
	runtime.KeepAlive(name)
}

// ClusterQuery is the address node registered as name.
func ClusterQuery(node, name string) (Addr, error) {
	session := clQuery(sptr(node), uint32(len(node)), sptr(name), uint32(len(name)))
	runtime.KeepAlive(node)
	runtime.KeepAlive(name)
	return addressAnswer(session, "query")
}

// Multicast channels.

// ChannelError says why a channel operation failed (wit:
// multicast.channel-error).
type ChannelError uint8

func (e ChannelError) Error() string {
	return [...]string{"no such channel", "channel exists", "invalid channel number", "not the channel's owner", "the channel's node is down"}[min(int(e), 4)]
}

func channelResult(r *retArea) error {
	if r.tag() == 0 {
		return nil
	}
	return ChannelError(uint8(r.at(1)))
}

// NewChannel makes a channel on this node (number 0: a free one).
func NewChannel(number uint32) (uint32, error) {
	var r retArea
	some := uint32(0)
	if number != 0 {
		some = 1
	}
	mcNew(some, number, r.p())
	if err := channelResult(&r); err != nil {
		return 0, err
	}
	return r.at(1), nil
}

// DeleteChannel deletes a channel this node made.
func DeleteChannel(channel uint32) error {
	var r retArea
	mcDelete(channel, r.p())
	return channelResult(&r)
}

// Publish sends payload to every subscriber of channel.
func Publish(channel uint32, payload []byte) error {
	var r retArea
	mcPublish(channel, ptr(payload), uint32(len(payload)), r.p())
	runtime.KeepAlive(payload)
	return channelResult(&r)
}

// Subscribe receives channel's publishes (KindMulticast messages).
func Subscribe(channel uint32) error {
	var r retArea
	mcSubscribe(channel, r.p())
	return channelResult(&r)
}

// Unsubscribe stops receiving channel.
func Unsubscribe(channel uint32) { mcUnsubscribe(channel) }

// Groups, as Erlang's pg.

// The group policies (wit: groups.policy).
const (
	RoundRobin uint32 = iota
	ConsistentHash
	LeastPending
)

// Join makes member (a service of this node) a member of group.
func Join(group string, member Addr, policy uint32) error {
	var r retArea
	grJoin(sptr(group), uint32(len(group)), uint32(member), policy, r.p())
	runtime.KeepAlive(group)
	return textResult(&r)
}

// Leave takes member out of group.
func Leave(group string, member Addr) {
	grLeave(sptr(group), uint32(len(group)), uint32(member))
	runtime.KeepAlive(group)
}

// GroupCall calls a member of group picked by its policy (key for
// consistent hashing) and blocks this goroutine until it answers.
func GroupCall(group string, key, payload []byte, ms uint32) ([]byte, error) {
	session := grCall(sptr(group), uint32(len(group)), ptr(key), uint32(len(key)), ptr(payload), uint32(len(payload)), ms)
	runtime.KeepAlive(group)
	runtime.KeepAlive(key)
	runtime.KeepAlive(payload)
	return answer(wait(session))
}

// LE32 is the 4 little-endian bytes of an address, as the runtime's
// payloads carry them.
func LE32(a Addr) []byte { return binary.LittleEndian.AppendUint32(nil, uint32(a)) }
