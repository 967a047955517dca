package ldapdemo

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/go-ldap/ldap/v3"
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

// UserDN returns the DN of seeded user i: uid=userNNNN,ou=people,dc=example,dc=org.
func UserDN(i int) string { return fmt.Sprintf("uid=%s,ou=people,%s", userUID(i), BaseDN) }

// UserPassword returns the clear-text password of seeded user i: "passwordNNNN".
func UserPassword(i int) string { return fmt.Sprintf("password%04d", i) }

// UserDescription returns the description value of seeded user i (DescriptionLen bytes of
// deterministic ASCII text).
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

// slapdConf is the slapd.conf of a server whose pid/args files live in dir and whose mdb
// database lives in dataDir.
func slapdConf(dir, dataDir string) string {
	var b strings.Builder
	for _, schema := range []string{"core", "cosine", "inetorgperson", "nis"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", schema)
	}
	// Debian builds the backends as modules.
	b.WriteString("modulepath /usr/lib/ldap\nmoduleload back_mdb\n")
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s\n", filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	b.WriteString("loglevel 0\nsizelimit unlimited\n\n")
	b.WriteString("database mdb\n")
	fmt.Fprintf(&b, "suffix %q\nrootdn %q\nrootpw %s\n", BaseDN, AdminDN, AdminPW)
	fmt.Fprintf(&b, "directory %s\n", dataDir)
	// 1 GiB map (sparse, allocated on demand); skip fsync: a demo database is disposable.
	b.WriteString("maxsize 1073741824\ndbnosync\n")
	b.WriteString("index objectClass eq\nindex uid eq\n")
	return b.String()
}

// seedEntries returns the add requests of the whole seeded directory (see Server), parents
// first.
func seedEntries(users int) []*ldap.AddRequest {
	add := func(dn string, attrs ...[]string) *ldap.AddRequest {
		r := ldap.NewAddRequest(dn, nil)
		for _, a := range attrs {
			r.Attribute(a[0], a[1:])
		}
		return r
	}
	out := []*ldap.AddRequest{
		add(BaseDN, []string{"objectClass", "dcObject", "organization"}, []string{"dc", "example"}, []string{"o", "Example"}),
		add("ou=people,"+BaseDN, []string{"objectClass", "organizationalUnit"}, []string{"ou", "people"}),
		add("ou=groups,"+BaseDN, []string{"objectClass", "organizationalUnit"}, []string{"ou", "groups"}),
	}
	for i := 0; i < users; i++ {
		uid := userUID(i)
		out = append(out, add(UserDN(i),
			[]string{"objectClass", "inetOrgPerson"},
			[]string{"uid", uid},
			[]string{"cn", fmt.Sprintf("User %04d", i)},
			[]string{"sn", fmt.Sprintf("Surname%04d", i)},
			[]string{"mail", uid + "@example.org"},
			[]string{"userPassword", UserPassword(i)},
			[]string{"description", UserDescription(i)},
		))
	}
	for g := 0; g < Groups; g++ {
		members := []string{"member"}
		for i := g; i < users; i += Groups {
			members = append(members, UserDN(i))
		}
		if len(members) == 1 {
			members = append(members, AdminDN) // member is required
		}
		cn := fmt.Sprintf("group%02d", g)
		out = append(out, add("cn="+cn+",ou=groups,"+BaseDN, []string{"objectClass", "groupOfNames"}, []string{"cn", cn}, members))
	}
	return out
}
