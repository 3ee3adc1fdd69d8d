//go:build linux

package capture

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is a PACKET_RX_RING (TPACKET_V2) shared with the kernel: the kernel writes each packet
// into the next free frame and hands the frame to us by setting TP_STATUS_USER; we give it back
// with TP_STATUS_KERNEL (Documentation/networking/packet_mmap.rst). libpcap works the same way.
//
// The ring is used for its timestamps more than for speed: tpacket_rcv stamps every frame when
// the packet reaches the socket. A plain recvmsg with SO_TIMESTAMPNS returns the skb's
// timestamp, which is only set while some socket on the machine has asked for timestamps — the
// kernel turns that on through deferred work — and otherwise is taken at recvmsg time, i.e.
// whenever the reader goroutine got to run.
type ring struct {
	mem   []byte
	next  int // index of the next frame to look at
	valid bool
}

// Ring geometry: a frame holds the tpacket2_hdr, the sockaddr_ll and the packet cut to snapLen by
// the filter (the network header starts at offset 80 for SOCK_DGRAM); 2048 frames absorb a
// burst far larger than any lesson sends while the reader is descheduled.
const (
	frameSize  = 256
	blockSize  = 4096
	blockCount = 128
	frameCount = blockSize / frameSize * blockCount
	// sllOffset is TPACKET_ALIGN(sizeof(struct tpacket2_hdr)): where struct sockaddr_ll starts.
	sllOffset = (unix.SizeofTpacket2Hdr + unix.TPACKET_ALIGNMENT - 1) &^ (unix.TPACKET_ALIGNMENT - 1)
	// pkttypeOffset is sll_pkttype's offset inside struct sockaddr_ll.
	pkttypeOffset = 10
)

func mapRing(fd int) (*ring, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return nil, fmt.Errorf("capture: setsockopt(PACKET_VERSION, TPACKET_V2): %w", err)
	}
	req := unix.TpacketReq{Block_size: blockSize, Block_nr: blockCount, Frame_size: frameSize, Frame_nr: frameCount}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, fmt.Errorf("capture: setsockopt(PACKET_RX_RING): %w", err)
	}
	mem, err := unix.Mmap(fd, 0, blockSize*blockCount, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("capture: mmap of the packet ring: %w", err)
	}
	return &ring{mem: mem, valid: true}, nil
}

// each hands every frame the kernel has filled, in order, to fn and returns the frames to the
// kernel. Only the reader goroutine calls it (and Close's final pass after the reader stopped).
func (r *ring) each(fn func(pkt []byte, pkttype uint8, ts time.Time)) {
	if !r.valid {
		return
	}
	for range frameCount {
		frame := r.mem[r.next*frameSize : (r.next+1)*frameSize]
		hdr := (*unix.Tpacket2Hdr)(unsafe.Pointer(&frame[0]))
		// The status word is the hand-over point: an atomic load orders our reads of the frame
		// after the kernel's writes (the kernel publishes with smp_wmb before setting it).
		if atomic.LoadUint32(&hdr.Status)&unix.TP_STATUS_USER == 0 {
			return
		}
		start, end := int(hdr.Net), int(hdr.Net)+int(hdr.Snaplen)
		if start >= sllOffset && end <= frameSize {
			fn(frame[start:end], frame[sllOffset+pkttypeOffset], time.Unix(int64(hdr.Sec), int64(hdr.Nsec)))
		}
		atomic.StoreUint32(&hdr.Status, unix.TP_STATUS_KERNEL)
		r.next = (r.next + 1) % frameCount
	}
}

func (r *ring) unmap() {
	if r.valid {
		r.valid = false
		_ = unix.Munmap(r.mem)
	}
}
