// counter_go_v2: counter_go's next version: the same count, carried over
// by an upgrade, answered as "v2:<count>".
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
			return []byte("v2:" + strconv.FormatUint(count, 10)), nil
		}
		return nil, nil
	})
}

func main() {}
