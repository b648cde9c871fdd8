// counter_go: counts the text messages it gets and answers a request with
// "v1:<count>"; its count survives an upgrade (OnSave, OnLoad) to
// counter_go_v2, which answers "v2:<count>".
package main

import (
	"encoding/binary"
	"strconv"

	"skyhost"
)

var count uint64

func init() {
	skyhost.OnSave(func() []byte { return binary.LittleEndian.AppendUint64(nil, count) })
	skyhost.OnLoad(func(state []byte) error {
		count = binary.LittleEndian.Uint64(state)
		return nil
	})
	skyhost.Serve(func(m *skyhost.Msg) ([]byte, error) {
		switch m.Kind {
		case skyhost.KindText:
			count++
		case skyhost.KindRequest:
			return []byte("v1:" + strconv.FormatUint(count, 10)), nil
		}
		return nil, nil
	})
}

func main() {}
