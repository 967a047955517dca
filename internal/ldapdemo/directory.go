// Package ldapdemo runs a real OpenLDAP slapd on a loopback port, seeded with a small fixed
// directory under dc=example,dc=org. It is the demo target of `make run` (`nowconnect up
// --forward LISTEN=demo`) and of `nowconnect demo`, and the LDAP server of the tests
// (internal/testenv wraps it).
//
//	s, err := ldapdemo.Start(ctx, ldapdemo.Options{Users: 5})
//	// s.URL() is "ldap://127.0.0.1:PORT"; anonymous reads see every entry
//	defer s.Stop()
//
// It needs slapd and the OpenLDAP client tools (ldapsearch, ldapadd): on Debian the slapd
// and ldap-utils packages, which `make run` and `make test` install. Without them Start
// returns ErrNotInstalled.
package ldapdemo

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Fixed identity of the seeded directory.
const (
	BaseDN  = "dc=example,dc=org"
	AdminDN = "cn=admin,dc=example,dc=org"
	AdminPW = "admin"
	// Groups is the number of seeded groupOfNames entries cn=group00..group09.
	Groups = 10
	// DescriptionLen is the length in bytes of every seeded user's description value.
	DescriptionLen = 200
)

// The seeded directory:
//
//	dc=example,dc=org                         (dcObject, organization; o: Example)
//	ou=people,dc=example,dc=org
//	ou=groups,dc=example,dc=org
//	uid=userNNNN,ou=people,dc=example,dc=org  NNNN = 0000..Users-1 (%04d), inetOrgPerson:
//	    uid, cn "User NNNN", sn "SurnameNNNN", mail userNNNN@example.org,
//	    userPassword "passwordNNNN" (clear text, so simple binds work),
//	    description: DescriptionLen bytes of deterministic ASCII text
//	cn=groupGG,ou=groups,dc=example,dc=org    GG = 00..09, groupOfNames; members: the
//	    users with index%10 == GG (the admin DN if there is none, as member is required)
//
// The admin (rootdn) has no size limit; the global size limit is lifted too, so anonymous
// searches return every entry.

// UserDN returns the DN of seeded user i: uid=userNNNN,ou=people,dc=example,dc=org.
func UserDN(i int) string { return fmt.Sprintf("uid=%s,ou=people,%s", userUID(i), BaseDN) }

// UserPassword returns the clear-text password of seeded user i: "passwordNNNN".
func UserPassword(i int) string { return fmt.Sprintf("password%04d", i) }

// UserDescription returns the description value of seeded user i (DescriptionLen bytes).
func UserDescription(i int) string {
	const filler = "The quick brown fox jumps over the lazy dog while the gateway relays every byte of this LDAP response unchanged. "
	var b strings.Builder
	fmt.Fprintf(&b, "Seeded directory entry for %s, number %d. ", userUID(i), i)
	for b.Len() < DescriptionLen {
		b.WriteString(filler)
	}
	d := b.String()[:DescriptionLen]
	// No trailing space: ldapsearch would print such a value base64-encoded.
	return d[:DescriptionLen-1] + "."
}

func userUID(i int) string { return fmt.Sprintf("user%04d", i) }

// slapdConf is the slapd.conf of a directory whose pid/args files live in dir and whose
// mdb database lives in dataDir; with certFile and keyFile, slapd serves TLS.
func slapdConf(dir, dataDir, certFile, keyFile string) string {
	var b strings.Builder
	for _, schema := range []string{"core", "cosine", "inetorgperson", "nis"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", schema)
	}
	// Debian builds the backends as modules.
	b.WriteString("modulepath /usr/lib/ldap\nmoduleload back_mdb\n")
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s\n", filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	b.WriteString("loglevel 0\nsizelimit unlimited\n")
	if certFile != "" {
		fmt.Fprintf(&b, "TLSCertificateFile %s\nTLSCertificateKeyFile %s\n", certFile, keyFile)
	}
	b.WriteString("\n")
	b.WriteString("database mdb\n")
	fmt.Fprintf(&b, "suffix %q\nrootdn %q\nrootpw %s\n", BaseDN, AdminDN, AdminPW)
	fmt.Fprintf(&b, "directory %s\n", dataDir)
	// 1 GiB map (sparse, allocated on demand); skip fsync: a demo database is disposable.
	b.WriteString("maxsize 1073741824\ndbnosync\n")
	b.WriteString("index objectClass eq\nindex uid eq\n")
	return b.String()
}

// seedLDIF returns the LDIF of the whole seeded directory with users users.
func seedLDIF(users int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n", BaseDN)
	fmt.Fprintf(&b, "dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n\n", BaseDN)
	fmt.Fprintf(&b, "dn: ou=groups,%s\nobjectClass: organizationalUnit\nou: groups\n\n", BaseDN)
	for i := 0; i < users; i++ {
		uid := userUID(i)
		fmt.Fprintf(&b, "dn: %s\nobjectClass: inetOrgPerson\nuid: %s\ncn: User %04d\nsn: Surname%04d\nmail: %s@example.org\nuserPassword: %s\ndescription: %s\n\n",
			UserDN(i), uid, i, i, uid, UserPassword(i), UserDescription(i))
	}
	for g := 0; g < Groups; g++ {
		fmt.Fprintf(&b, "dn: cn=group%02d,ou=groups,%s\nobjectClass: groupOfNames\ncn: group%02d\n", g, BaseDN, g)
		members := 0
		for i := g; i < users; i += Groups {
			fmt.Fprintf(&b, "member: %s\n", UserDN(i))
			members++
		}
		if members == 0 {
			fmt.Fprintf(&b, "member: %s\n", AdminDN)
		}
		b.WriteString("\n")
	}
	return b.String()
}
