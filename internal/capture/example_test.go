//go:build linux

package capture_test

import (
	"fmt"
	"net/netip"
	"time"

	"socklab/internal/capture"
)

// How a chapter shows the packets of its own connection. The lesson's system calls (socket,
// bind, listen, connect, accept, close) stay in the chapter; the capture only watches.
// (Not run: it needs the private namespace; TestKernelStatesBesideTheClose runs the same steps.)
func Example() {
	listenAddr := netip.MustParseAddrPort("127.0.0.1:9000") // from getsockname after listen()

	// Start before connect(), so the SYN is recorded.
	c, err := capture.Start(listenAddr.Port())
	if err != nil {
		fmt.Println("packet view skipped:", err) // e.g. capture.ErrNotPrivate with -host
		return
	}
	defer c.Close()

	var notes []capture.Note
	clientAddr := netip.MustParseAddrPort("127.0.0.1:40000") // from getsockname after connect()
	// ... connect(2), accept(2) ...
	if states, err := capture.KernelStates(clientAddr, listenAddr); err == nil {
		notes = append(notes, states...)
	}
	// ... close(2) on both ends, KernelStates after each step ...

	conv, err := c.WaitConversation(clientAddr, listenAddr, 2*time.Second, (*capture.Conversation).Closed)
	if err != nil {
		fmt.Println(err) // says how many segments were recorded
		return
	}
	syn := conv.Segments[0]
	fmt.Printf("client ISN %d, SYN seq=%d\n", conv.ClientISN, syn.Seq)
	fmt.Print(conv.ASCII(notes...))   // for the terminal, 80 columns
	fmt.Print(conv.Mermaid(notes...)) // for docs/
}
