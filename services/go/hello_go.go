// hello_go: the README's first service in Go (keep the two the same).
// Registers ".hello_go"; a request carries a name (utf-8) and is answered,
// 10 ms later, with "hello, <name>". Other requests are handled meanwhile.
package main

import "skyhost"

func init() {
	skyhost.OnInit(func(args []byte) error {
		return skyhost.Register(".hello_go")
	})
	skyhost.Serve(func(m *skyhost.Msg) ([]byte, error) {
		if m.Kind != skyhost.KindRequest {
			return nil, nil
		}
		skyhost.Sleep(10) // this handler waits; the service takes other messages
		return append([]byte("hello, "), m.Payload...), nil
	})
}

func main() {}
