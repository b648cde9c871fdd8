// conform_go: the conformance suite's service in Go (docs/languages.md).
// One opcode byte, then its arguments; addresses are 4 bytes little-endian.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"skyhost"
)

// Sources of the exit notices received, 4 bytes each.
var exits []byte

func address(args []byte) skyhost.Addr {
	return skyhost.Addr(binary.LittleEndian.Uint32(args))
}

// forward is a call's answer as the suite wants it: the reply, or
// `cause=<n>`.
func forward(reply []byte, err error) ([]byte, error) {
	var failed *skyhost.CallError
	if errors.As(err, &failed) {
		return nil, fmt.Errorf("cause=%d", failed.Cause)
	}
	return reply, err
}

func handle(m *skyhost.Msg) ([]byte, error) {
	if m.Kind == skyhost.KindExit {
		exits = append(exits, skyhost.LE32(m.Source)...)
		return nil, nil
	}
	if m.Kind != skyhost.KindRequest {
		return nil, nil
	}
	if len(m.Payload) == 0 {
		return nil, errors.New("empty request")
	}
	op, args := m.Payload[0], m.Payload[1:]
	if strings.IndexByte("scum", op) >= 0 && len(args) < 4 {
		return nil, errors.New("no address")
	}
	switch op {
	case 'e':
		return args, nil
	case 's':
		if err := skyhost.Send(address(args), skyhost.KindText, args[4:]); err != nil {
			return nil, err
		}
		return nil, nil
	case 'c':
		reply, err := skyhost.Call(address(args), args[4:])
		var refused skyhost.SendError
		if errors.As(err, &refused) {
			return nil, fmt.Errorf("send=%s", refused)
		}
		return forward(reply, err)
	case 'r':
		if err := skyhost.Register(string(args)); err != nil {
			return nil, errors.New("register failed")
		}
		return nil, nil
	case 'q':
		if found, ok := skyhost.Query(string(args)); ok {
			return skyhost.LE32(found), nil
		}
		return nil, nil
	case 't':
		if len(args) != 4 {
			return nil, errors.New("t: ms is 4 bytes")
		}
		skyhost.Sleep(uint32(address(args)))
		return nil, nil
	case 'p':
		spawned, err := skyhost.Spawn(string(args), nil)
		if err != nil {
			return forward(nil, err)
		}
		return skyhost.LE32(spawned), nil
	case 'u':
		if err := skyhost.Send(address(args), skyhost.KindText, nil); err != nil {
			return []byte(err.Error()), nil
		}
		return nil, nil
	case 'x':
		panic("asked to trap")
	case 'm':
		skyhost.Monitor(address(args))
		return nil, nil
	case 'n':
		return exits, nil
	}
	return nil, errors.New("unknown op")
}

func init() {
	skyhost.Serve(handle)
}

func main() {}
