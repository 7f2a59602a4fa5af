// cosigcheck opens a cosigned checkpoint note with golang.org/x/mod/sumdb/note:
// the log's signature by the standard Ed25519 verifier, each witness's
// cosignature by a c2sp.org/tlog-cosignature (cosignature/v1) verifier written
// here from the spec. Usage: cosigcheck NOTE_FILE LOG_VKEY WITNESS_VKEY...
// Prints one line per verified signature: "<name> <timestamp or log>".
package main

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

type cosigV1 struct {
	name string
	hash uint32
	key  ed25519.PublicKey
}

func (v *cosigV1) Name() string    { return v.name }
func (v *cosigV1) KeyHash() uint32 { return v.hash }
func (v *cosigV1) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize {
		return false
	}
	t := binary.BigEndian.Uint64(sig[:8])
	signed := append([]byte(fmt.Sprintf("cosignature/v1\ntime %d\n", t)), msg...)
	return ed25519.Verify(v.key, signed, sig[8:])
}

func witness(vkey string) (*cosigV1, error) {
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return nil, fmt.Errorf("malformed witness key")
	}
	hash, err := strconv.ParseUint(parts[1], 16, 32)
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 33 || key[0] != 0x04 {
		return nil, fmt.Errorf("not a cosignature/v1 key")
	}
	id := sha256.Sum256(append([]byte(parts[0]+"\n"), key...))
	if binary.BigEndian.Uint32(id[:4]) != uint32(hash) {
		return nil, fmt.Errorf("key id does not match")
	}
	return &cosigV1{parts[0], uint32(hash), ed25519.PublicKey(key[1:])}, nil
}

func main() {
	msg, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	logV, err := note.NewVerifier(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	verifiers := []note.Verifier{logV}
	for _, vkey := range os.Args[3:] {
		w, err := witness(vkey)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		verifiers = append(verifiers, w)
	}
	n, err := note.Open(msg, note.VerifierList(verifiers...))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, sig := range n.Sigs {
		raw, _ := base64.StdEncoding.DecodeString(sig.Base64)
		if sig.Name == logV.Name() && sig.Hash == logV.KeyHash() {
			fmt.Printf("%s log\n", sig.Name)
		} else {
			fmt.Printf("%s %d\n", sig.Name, binary.BigEndian.Uint64(raw[4:12]))
		}
	}
}
