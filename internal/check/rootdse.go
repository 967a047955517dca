package check

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// The rootDSE read that proves a port speaks LDAP is sent by hand (with go-ldap's BER
// library) rather than through go-ldap's client, for two reasons:
//
//   - its message ID is 10 (0x0a, a newline) so that the request's fifth byte ends a
//     line: line-based services (Redis, memcached, HTTP) answer the "line" with an error
//     at once instead of waiting for more. (go-ldap numbers from 1; the request's first
//     newline then comes after a NUL byte, and Redis, for one, waits for the rest of a
//     line that never ends.)
//   - the first byte of the answer tells: an LDAPMessage is a BER SEQUENCE (0x30).
//
// The exchange reads exactly the answer's packets (no read-ahead), so go-ldap's client
// takes the connection over afterwards.

// rootDSEMessageID is the message ID of the rootDSE read; see above.
const rootDSEMessageID = 10

// maxRootDSE bounds the bytes read for the rootDSE answer.
const maxRootDSE = 1 << 20

// errNotLDAP (wrapped in a notLDAPError) means the first answer was not an LDAPMessage.
var errNotLDAP = errors.New("not LDAP")

// notLDAPError holds the first bytes of an answer that is not LDAP.
type notLDAPError struct{ start []byte }

func (e *notLDAPError) Error() string { return "not LDAP: the server answered " + quoteStart(e.start) }
func (e *notLDAPError) Unwrap() error { return errNotLDAP }

// rootDSEResult is the answer to the rootDSE read.
type rootDSEResult struct {
	attrs map[string][]string
	code  int    // the LDAP result code of SearchResultDone
	diag  string // its diagnostic message
}

// readRootDSE sends a base search of "" for attrs over conn and reads the answer. A
// first byte that is not an LDAPMessage is a *notLDAPError; a malformed answer wraps
// errNotLDAP too.
func readRootDSE(ctx context.Context, conn net.Conn, attrs []string) (*rootDSEResult, error) {
	stop := guard(ctx, conn)
	defer stop()
	if _, err := conn.Write(rootDSERequest(attrs)); err != nil {
		return nil, err
	}
	r := io.LimitReader(conn, maxRootDSE)
	res := &rootDSEResult{attrs: map[string][]string{}}
	for {
		first := make([]byte, 32)
		if _, err := io.ReadFull(r, first[:1]); err != nil {
			return nil, err
		}
		if first[0] != 0x30 {
			_ = conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond)) // whatever else has arrived
			n, _ := r.Read(first[1:])
			return nil, &notLDAPError{start: first[:1+n]}
		}
		p, err := ber.ReadPacket(io.MultiReader(bytes.NewReader(first[:1]), r))
		if err != nil {
			if ctx.Err() != nil || isTimeout(err) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: malformed answer: %v", errNotLDAP, err)
		}
		done, err := res.take(p)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errNotLDAP, err)
		}
		if done {
			return res, nil
		}
	}
}

// take folds one LDAPMessage of the answer into res; done is true at SearchResultDone.
func (res *rootDSEResult) take(p *ber.Packet) (done bool, err error) {
	if len(p.Children) < 2 {
		return false, errors.New("an LDAPMessage without a protocol operation")
	}
	if id, ok := p.Children[0].Value.(int64); !ok || id != rootDSEMessageID {
		if ok && id == 0 { // a Notice of Disconnection
			return false, errors.New("the server disconnected (notice of disconnection)")
		}
		return false, fmt.Errorf("an answer to message %v, want %d", p.Children[0].Value, rootDSEMessageID)
	}
	op := p.Children[1]
	if op.ClassType != ber.ClassApplication {
		return false, errors.New("an LDAPMessage whose operation is not an application tag")
	}
	switch op.Tag {
	case ldap.ApplicationSearchResultEntry:
		if len(op.Children) == 2 {
			for _, a := range op.Children[1].Children {
				if len(a.Children) != 2 {
					continue
				}
				name, _ := a.Children[0].Value.(string)
				for _, v := range a.Children[1].Children {
					s, _ := v.Value.(string)
					res.attrs[name] = append(res.attrs[name], s)
				}
			}
		}
		return false, nil
	case ldap.ApplicationSearchResultReference:
		return false, nil
	case ldap.ApplicationSearchResultDone:
		if len(op.Children) < 3 {
			return false, errors.New("a SearchResultDone without a result")
		}
		code, _ := op.Children[0].Value.(int64)
		res.code = int(code)
		res.diag, _ = op.Children[2].Value.(string)
		return true, nil
	}
	return false, fmt.Errorf("an unexpected LDAP operation (application tag %d)", op.Tag)
}

// rootDSERequest encodes the SearchRequest of the rootDSE: base "", scope baseObject,
// never deref, no limits, (objectClass=*), attrs.
func rootDSERequest(attrs []string) []byte {
	msg := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAPMessage")
	msg.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, rootDSEMessageID, "messageID"))
	req := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationSearchRequest, nil, "SearchRequest")
	req.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", "baseObject"))
	req.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, ldap.ScopeBaseObject, "scope"))
	req.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, ldap.NeverDerefAliases, "derefAliases"))
	req.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 0, "sizeLimit"))
	req.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 0, "timeLimit"))
	req.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, "typesOnly"))
	// (objectClass=*): a present filter, context tag 7.
	req.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, ldap.FilterPresent, "objectClass", "present"))
	list := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "attributes")
	for _, a := range attrs {
		list.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, a, "attribute"))
	}
	req.AppendChild(list)
	msg.AppendChild(req)
	return msg.Bytes()
}
