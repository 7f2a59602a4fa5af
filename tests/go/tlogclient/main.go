// Command tlogclient verifies a log published in C2SP tlog-tiles layout with
// code not written in this project: golang.org/x/mod/sumdb/note checks the
// checkpoint's signature, golang.org/x/mod/sumdb/tlog checks the hash tiles
// against the checkpoint's root (TileHashReader), every entry's hash against
// the level-0 tiles (RecordHash), and inclusion proofs of sampled entries
// (ProveRecord, CheckRecord).
//
// The glue here is only what x/mod leaves to its caller: fetching a resource
// (a file or an HTTP GET under the log's prefix), the tlog-tiles paths (x/mod
// names tiles tile/H/L/N, the C2SP spec tile/L/N), the uint16 length-prefixed
// entry bundles, and the C2SP checkpoint body (x/mod's ParseTree wants the
// go.sum header line instead of an origin).
//
//	tlogclient -prefix DIR|URL -vkey VKEY [-origin ORIGIN] [-sample N]
//
// Exit 0 and one "ok" line when everything verifies; otherwise exit 1 with
// the first failure.
package main

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const height = 8 // c2sp.org/tlog-tiles: 256 hashes per full tile

var prefix string

// fetch reads one resource under the log's tlog-tiles prefix.
func fetch(path string) ([]byte, error) {
	if strings.HasPrefix(prefix, "http://") || strings.HasPrefix(prefix, "https://") {
		resp, err := http.Get(strings.TrimSuffix(prefix, "/") + "/" + path)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		return io.ReadAll(io.LimitReader(resp.Body, 1<<25))
	}
	return os.ReadFile(filepath.Join(prefix, filepath.FromSlash(path)))
}

// indexPath is <N> of the spec: 3-digit path elements, all but the last x-prefixed.
func indexPath(n int64) string {
	s := fmt.Sprintf("%03d", n%1000)
	for n /= 1000; n > 0; n /= 1000 {
		s = fmt.Sprintf("x%03d/%s", n%1000, s)
	}
	return s
}

// tilePath is the C2SP path of a tile (level -1: the entry bundle).
func tilePath(t tlog.Tile) string {
	level := strconv.Itoa(t.L)
	if t.L == -1 {
		level = "entries"
	}
	p := "tile/" + level + "/" + indexPath(t.N)
	if t.W < 1<<height {
		p += ".p/" + strconv.Itoa(t.W)
	}
	return p
}

type tileReader struct{}

func (tileReader) Height() int { return height }

func (tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := fetch(tilePath(t))
		if err != nil {
			return nil, err
		}
		if len(data) != t.W*tlog.HashSize {
			return nil, fmt.Errorf("%s: %d bytes, want %d", tilePath(t), len(data), t.W*tlog.HashSize)
		}
		out[i] = data
	}
	return out, nil
}

func (tileReader) SaveTiles([]tlog.Tile, [][]byte) {}

// parseCheckpoint reads the body of a C2SP tlog-checkpoint: origin, size, root.
func parseCheckpoint(text string) (string, tlog.Tree, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		return "", tlog.Tree{}, errors.New("checkpoint: fewer than 3 lines")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return "", tlog.Tree{}, fmt.Errorf("checkpoint: bad tree size %q", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return "", tlog.Tree{}, fmt.Errorf("checkpoint: bad root hash %q", lines[2])
	}
	var h tlog.Hash
	copy(h[:], root)
	return lines[0], tlog.Tree{N: size, Hash: h}, nil
}

// entries splits an entry bundle of w uint16 length-prefixed entries.
func entries(data []byte, w int) ([][]byte, error) {
	var out [][]byte
	for len(data) > 0 {
		if len(data) < 2 {
			return nil, errors.New("entry bundle ends inside a length")
		}
		n := int(binary.BigEndian.Uint16(data))
		if len(data) < 2+n {
			return nil, errors.New("entry bundle ends inside an entry")
		}
		out = append(out, data[2:2+n])
		data = data[2+n:]
	}
	if len(out) != w {
		return nil, fmt.Errorf("entry bundle holds %d entries, want %d", len(out), w)
	}
	return out, nil
}

func run(vkey, origin string, sample int64) error {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return fmt.Errorf("verifier key: %v", err)
	}
	raw, err := fetch("checkpoint")
	if err != nil {
		return err
	}
	n, err := note.Open(raw, note.VerifierList(verifier))
	if err != nil {
		return fmt.Errorf("checkpoint signature: %v", err)
	}
	gotOrigin, tree, err := parseCheckpoint(n.Text)
	if err != nil {
		return err
	}
	if origin != "" && gotOrigin != origin {
		return fmt.Errorf("checkpoint origin %q, want %q", gotOrigin, origin)
	}
	hr := tlog.TileHashReader(tree, tileReader{})
	th, err := tlog.TreeHash(tree.N, hr)
	if err != nil {
		return fmt.Errorf("tree hash from tiles: %v", err)
	}
	if th != tree.Hash {
		return errors.New("tree hash from tiles differs from the checkpoint's root")
	}
	// Every entry: its record hash is the leaf hash in the level-0 tile.
	var all [][]byte
	for start := int64(0); start < tree.N; start += 1 << height {
		w := tree.N - start
		if w > 1<<height {
			w = 1 << height
		}
		bundle := tlog.Tile{H: height, L: -1, N: start >> height, W: int(w)}
		data, err := fetch(tilePath(bundle))
		if err != nil {
			return err
		}
		es, err := entries(data, int(w))
		if err != nil {
			return fmt.Errorf("%s: %v", tilePath(bundle), err)
		}
		indexes := make([]int64, w)
		for i := range indexes {
			indexes[i] = tlog.StoredHashIndex(0, start+int64(i))
		}
		hashes, err := hr.ReadHashes(indexes)
		if err != nil {
			return fmt.Errorf("level-0 hashes at %d: %v", start, err)
		}
		for i, e := range es {
			if tlog.RecordHash(e) != hashes[i] {
				return fmt.Errorf("entry %d: its hash is not the leaf hash in the tiles", start+int64(i))
			}
		}
		all = append(all, es...)
	}
	// Inclusion proofs of sampled entries, against the checkpoint's root.
	proved := 0
	if sample > 0 && tree.N > 0 {
		step := tree.N / sample
		if step < 1 {
			step = 1
		}
		for i := int64(0); i < tree.N; i += step {
			for _, j := range []int64{i, tree.N - 1 - i} {
				p, err := tlog.ProveRecord(tree.N, j, hr)
				if err != nil {
					return fmt.Errorf("inclusion proof of entry %d: %v", j, err)
				}
				if err := tlog.CheckRecord(p, tree.N, tree.Hash, j, tlog.RecordHash(all[j])); err != nil {
					return fmt.Errorf("inclusion of entry %d: %v", j, err)
				}
				proved++
			}
		}
	}
	fmt.Printf("ok origin=%s size=%d entries=%d proofs=%d signer=%s\n",
		gotOrigin, tree.N, len(all), proved, n.Sigs[0].Name)
	return nil
}

func main() {
	flag.StringVar(&prefix, "prefix", "", "the log's tlog-tiles prefix: a directory or an http(s) URL")
	vkey := flag.String("vkey", "", "the log's verifier key (signed-note format)")
	origin := flag.String("origin", "", "the checkpoint origin to require")
	sample := flag.Int64("sample", 16, "about this many inclusion proofs, from both ends")
	flag.Parse()
	if prefix == "" || *vkey == "" {
		fmt.Fprintln(os.Stderr, "usage: tlogclient -prefix DIR|URL -vkey VKEY [-origin ORIGIN] [-sample N]")
		os.Exit(2)
	}
	if err := run(*vkey, *origin, *sample); err != nil {
		fmt.Fprintln(os.Stderr, "tlogclient:", err)
		os.Exit(1)
	}
}
