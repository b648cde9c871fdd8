// adder_go: adds two numbers sent as JSON, or has another service (in any
// language) add them: the cross-language JSON test's Go side.
//
// Request {"a": 2, "b": 3} answers {"sum": 5, "by": "go"}; with
// "via": <address> it calls that service with {"a", "b"} as JSON and answers
// its answer plus "through": "go".
package main

import (
	"encoding/json"

	"skyhost"
)

type request struct {
	A   int64         `json:"a"`
	B   int64         `json:"b"`
	Via *skyhost.Addr `json:"via,omitempty"`
}

func init() {
	skyhost.Serve(func(m *skyhost.Msg) ([]byte, error) {
		if m.Kind != skyhost.KindRequest {
			return nil, nil
		}
		var req request
		if err := json.Unmarshal(m.Payload, &req); err != nil {
			return nil, err
		}
		if req.Via == nil {
			return json.Marshal(map[string]any{"sum": req.A + req.B, "by": "go"})
		}
		ask, err := json.Marshal(map[string]int64{"a": req.A, "b": req.B})
		if err != nil {
			return nil, err
		}
		reply, err := skyhost.Call(*req.Via, ask)
		if err != nil {
			return nil, err
		}
		var answer map[string]any
		if err := json.Unmarshal(reply, &answer); err != nil {
			return nil, err
		}
		answer["through"] = "go"
		return json.Marshal(answer)
	})
}

func main() {}
