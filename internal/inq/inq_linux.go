package inq

import "golang.org/x/sys/unix"

// PendingFD returns how many received bytes wait unread in socket fd (SIOCINQ;
// 0 on an error).
func PendingFD(fd int) int {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil {
		return 0
	}
	return n
}
