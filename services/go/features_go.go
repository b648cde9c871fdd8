// features_go: the Go SDK's cluster, group and multicast calls, one request
// each (the first byte says which; the rest is a payload):
//
//	'n' answers "<node name>/<harbor id>"
//	'c' registers itself cluster-wide as "features_go" and calls itself
//	    through the cluster with 'e' + payload
//	'g' joins group "features_go" and calls the group with 'e' + payload
//	'm' makes a channel, subscribes, publishes the payload and answers
//	    what arrived on it
//	'e' answers the payload
//	't' calls the address in the payload's first 4 bytes (little-endian)
//	    with the rest, timed out after 50 ms (CallTimeout), and answers
//	    its reply or fails with its error
package main

import (
	"encoding/binary"
	"errors"
	"strconv"

	"skyhost"
)

// What multicast brought, by channel.
var published = map[uint32][]byte{}

func handle(m *skyhost.Msg) ([]byte, error) {
	if m.Kind == skyhost.KindMulticast {
		published[m.Session] = m.Payload
		return nil, nil
	}
	if m.Kind != skyhost.KindRequest || len(m.Payload) == 0 {
		return nil, nil
	}
	op, rest := m.Payload[0], m.Payload[1:]
	echo := append([]byte{'e'}, rest...)
	switch op {
	case 'e':
		return rest, nil
	case 't':
		if len(rest) < 4 {
			return nil, errors.New("'t' wants an address")
		}
		dest := skyhost.Addr(binary.LittleEndian.Uint32(rest))
		return skyhost.CallTimeout(dest, rest[4:], 50)
	case 'n':
		return []byte(skyhost.NodeName() + "/" + strconv.Itoa(int(skyhost.HarborID()))), nil
	case 'c':
		skyhost.ClusterRegister("features_go", skyhost.Self())
		return skyhost.ClusterCall(skyhost.NodeName(), skyhost.Service{Name: "features_go"}, echo, 5000)
	case 'g':
		if err := skyhost.Join("features_go", skyhost.Self(), skyhost.RoundRobin); err != nil {
			return nil, err
		}
		return skyhost.GroupCall("features_go", nil, echo, 5000)
	case 'm':
		channel, err := skyhost.NewChannel(0)
		if err != nil {
			return nil, err
		}
		defer func() { _ = skyhost.DeleteChannel(channel) }()
		if err := skyhost.Subscribe(channel); err != nil {
			return nil, err
		}
		if err := skyhost.Publish(channel, rest); err != nil {
			return nil, err
		}
		for range 500 {
			if got, ok := published[channel]; ok {
				return got, nil
			}
			skyhost.Sleep(1)
		}
		return nil, errors.New("the publish never arrived")
	}
	return nil, errors.New("unknown op")
}

func init() {
	skyhost.Serve(handle)
}

func main() {}
