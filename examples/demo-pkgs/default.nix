# An offline stand-in for nixpkgs: a package set built from nothing but
# `derivation`, builtins and a static busybox, so that Strata can be
# developed, tested and demonstrated on a machine without nixpkgs or a binary
# cache.
#
# The packages imitate the *shape* of real ones (names, versions, nested
# attribute sets, camelCase names, shared libraries, hard links, symlinks,
# executable and plain files) rather than their function: every program is a
# busybox applet or a small busybox shell script. Outputs mention the store
# paths of their dependencies, so Nix records real runtime references and the
# closures look like nixpkgs closures in miniature.
#
# Callable like nixpkgs (`import ./. { system = "x86_64-linux"; }`), or used
# as is by nix-build, which calls it with the defaults.
{ system ? builtins.currentSystem
  # Directory holding a *static* busybox. Only that one file is imported.
, busyboxDir ? /usr/bin
  # nixpkgs' configuration; only its unfree switches mean something here
  # (`allowUnfree`, `allowUnfreePredicate`), as in nixpkgs' check-meta.
, config ? { }
, ...
}:

let
  # busybox chooses its applet from argv[0], so the file keeps its name and
  # scripts call it as `…/busybox sh`. Importing the directory with a filter
  # (rather than the file) keeps that name inside the store path.
  busyboxStore = builtins.path {
    name = "busybox-static";
    path = busyboxDir;
    filter = path: type: baseNameOf path == "busybox";
  };
  bb = "${busyboxStore}/busybox";

  # Shell functions every build script can use. Scripts run under busybox sh,
  # whose applets work without PATH (standalone shell), which is why no
  # coreutils are needed to build coreutils.
  prelude = ''
    set -eu -o pipefail
    # mkscript FILE: writes stdin as an executable busybox script.
    mkscript() {
      mkdir -p "$(dirname "$1")"
      { echo '#!${bb} sh'; cat; } > "$1"
      chmod 755 "$1"
    }
    # mkblob FILE SEED KIB: deterministic bytes that look random (an LCG
    # seeded from SEED), so that a "library" has a believable size and does
    # not compress to nothing.
    mkblob() {
      mkdir -p "$(dirname "$1")"
      seed=$(printf '%d' "0x$(echo "$2" | md5sum | head -c 7)")
      awk -v s="$seed" -v n="$3" 'BEGIN {
        for (i = 0; i < n * 1024; i++) {
          s = (s * 69069 + 1) % 4294967296
          printf "%02x", int(s / 16777216)
        }
      }' | xxd -r -p > "$1"
    }
  '';

  # A few of nixpkgs' `lib.licenses`, shaped as there: most have an SPDX
  # identifier, some (`free`, `unfreeRedistributable`) have none. Strata's
  # SBOM reads `spdxId` where there is one and names the others by
  # `shortName`; `meta.license` may be one of these or a list of them.
  licenses = {
    gpl2Plus = { spdxId = "GPL-2.0-or-later"; shortName = "gpl2Plus"; fullName = "GNU General Public License v2.0 or later"; free = true; };
    gpl3Plus = { spdxId = "GPL-3.0-or-later"; shortName = "gpl3Plus"; fullName = "GNU General Public License v3.0 or later"; free = true; };
    lgpl21Plus = { spdxId = "LGPL-2.1-or-later"; shortName = "lgpl21Plus"; fullName = "GNU Lesser General Public License v2.1 or later"; free = true; };
    lgpl3Plus = { spdxId = "LGPL-3.0-or-later"; shortName = "lgpl3Plus"; fullName = "GNU Lesser General Public License v3.0 or later"; free = true; };
    mit = { spdxId = "MIT"; shortName = "mit"; fullName = "MIT License"; free = true; };
    mpl20 = { spdxId = "MPL-2.0"; shortName = "mpl20"; fullName = "Mozilla Public License 2.0"; free = true; };
    zlib = { spdxId = "Zlib"; shortName = "zlib"; fullName = "zlib License"; free = true; };
    curl = { spdxId = "curl"; shortName = "curl"; fullName = "curl License"; free = true; };
    psfl = { spdxId = "Python-2.0"; shortName = "psfl"; fullName = "Python Software Foundation License version 2"; free = true; };
    free = { shortName = "free"; fullName = "Unspecified free software license"; free = true; };
  };

  # The one builder. Attributes other than `script` and `meta` become
  # environment variables of the build, as with stdenv; `meta` stays an
  # attribute of the result, checked as nixpkgs' check-meta.nix does.
  mkPkg = { pname, version, script, meta ? { }, ... }@args:
    let
      drv = derivation ((builtins.removeAttrs args [ "script" "meta" ]) // {
        name = "${pname}-${version}";
        inherit system;
        builder = bb;
        args = [ "sh" "-c" (prelude + script) ];
      });
    in
    checkMeta { inherit pname version meta; pos = builtins.unsafeGetAttrPos "pname" args; } drv;

  # nixpkgs refuses a broken, unfree or insecure package the moment its
  # paths are asked for (not when the attribute is merely looked up), with
  # a `throw` naming the package and the file that defines it. The same
  # here, worded as nixpkgs words it, so that Strata meets these errors as
  # it does on a real channel. Unfree is refused, as nixpkgs does by
  # default (`config.allowUnfree` is false), unless `config` allows it:
  # all (`allowUnfree = true`) or those its `allowUnfreePredicate` accepts,
  # called with the package's attributes (`pname`, `name`, `meta`).
  checkMeta = { pname, version, meta, pos }: drv:
    let
      allowed = config.allowUnfree or false
        || (config.allowUnfreePredicate or (_: false)) { inherit pname version meta; name = "${pname}-${version}"; };
      # `meta.license` is one licence or a list of them, as in nixpkgs.
      unfree = if allowed then [ ] else builtins.filter (l: !(l.free or true))
        (if builtins.isList (meta.license or [ ]) then meta.license or [ ] else [ meta.license ]);
      where = if pos == null then "«unknown-file»" else "${pos.file}:${toString pos.line}";
      problem =
        if meta.broken or false then "is marked as broken"
        else if unfree != [ ] then "has an unfree license (‘${(builtins.head unfree).shortName or "unfree"}’)"
        else if (meta.knownVulnerabilities or [ ]) != [ ] then "is marked as insecure"
        else null;
      refuse = throw (
        "Package ‘${pname}-${version}’ in ${where} ${problem}, refusing to evaluate.\n\n"
        + "a) To temporarily allow such packages, you can use an environment variable\n"
        + "   for a single invocation of the nix tools.\n");
      refused = builtins.listToAttrs (map
        (o: { name = o; value = refuse; })
        ([ "outPath" "drvPath" ] ++ (drv.outputs or [ "out" ])));
    in
    (if problem == null then drv else drv // refused) // { inherit meta; };

  # A package of symlinks to busybox: each name runs the applet of that name.
  applets = pname: version: names: mkPkg {
    inherit pname version;
    script = ''
      mkdir -p $out/bin
      for a in ${toString names}; do ln -s ${bb} "$out/bin/$a"; done
    '';
  };

  self = {
    busybox = mkPkg {
      pname = "busybox";
      version = "1.35.0";
      script = ''
        mkdir -p $out/bin
        ln -s ${bb} $out/bin/busybox
        for a in $(${bb} --list); do
          [ "$a" = busybox ] || ln -s busybox "$out/bin/$a"
        done
      '';
    };

    # --------------------------------------------- what Nixery's `shell` needs

    bashInteractive = mkPkg {
      pname = "bash-interactive";
      version = "5.2-p15";
      meta = { license = licenses.gpl3Plus; homepage = "https://www.gnu.org/software/bash/"; };
      script = ''
        mkdir -p $out/bin
        ln -s ${bb} $out/bin/sh
        mkscript $out/bin/bash <<'EOF'
        exec ${bb} sh "$@"
        EOF
      '';
    };

    coreutils = applets "coreutils" "9.3" [
      "[" "base64" "basename" "cat" "chmod" "chown" "cp" "cut" "date" "dd"
      "df" "dirname" "du" "echo" "env" "expr" "false" "head" "id" "ln" "ls"
      "md5sum" "mkdir" "mktemp" "mv" "nproc" "printf" "pwd" "readlink"
      "realpath" "rm" "rmdir" "seq" "sha256sum" "sleep" "sort" "stat" "tail"
      "tee" "test" "touch" "tr" "true" "uname" "uniq" "wc" "whoami" "yes"
    ];

    cacert = mkPkg {
      pname = "nss-cacert";
      version = "3.95";
      meta = { license = licenses.mpl20; homepage = "https://curl.se/docs/caextract.html"; };
      script = ''
        d=$out/etc/ssl/certs
        mkdir -p $d
        for ca in "Strata Demo Root CA" "Strata Demo Second Root CA"; do
          echo "# $ca"
          echo "-----BEGIN CERTIFICATE-----"
          echo "$ca" | sha512sum | head -c 128 | xxd -r -p | base64 -w 64
          echo "-----END CERTIFICATE-----"
        done > $d/ca-bundle.crt
        ln -s ca-bundle.crt $d/ca-certificates.crt
      '';
    };

    iana-etc = mkPkg {
      pname = "iana-etc";
      version = "20231227";
      meta = { license = licenses.mit; homepage = "https://github.com/Mic92/iana-etc"; };
      script = ''
        mkdir -p $out/etc
        cat > $out/etc/services <<'EOF'
        ftp             21/tcp
        ssh             22/tcp
        domain          53/tcp
        domain          53/udp
        http            80/tcp          www
        https           443/tcp
        EOF
        cat > $out/etc/protocols <<'EOF'
        ip      0       IP
        icmp    1       ICMP
        tcp     6       TCP
        udp     17      UDP
        EOF
      '';
    };

    moreutils = mkPkg {
      pname = "moreutils";
      version = "0.69";
      meta = { license = licenses.free; homepage = "https://joeyh.name/code/moreutils/"; };
      script = ''
        mkscript $out/bin/sponge <<'EOF'
        # Soak up stdin, then write it to the file named, or to stdout.
        t=$(${bb} mktemp)
        ${bb} cat > "$t"
        if [ $# -gt 0 ]; then ${bb} mv "$t" "$1"; else ${bb} cat "$t"; ${bb} rm -f "$t"; fi
        EOF
        mkscript $out/bin/ts <<'EOF'
        while IFS= read -r line; do echo "$(${bb} date '+%b %d %H:%M:%S') $line"; done
        EOF
        mkscript $out/bin/chronic <<'EOF'
        out=$("$@" 2>&1) || { s=$?; printf '%s\n' "$out"; exit $s; }
        EOF
      '';
    };

    nano = mkPkg {
      pname = "nano";
      version = "7.2";
      script = ''
        mkscript $out/bin/nano <<'EOF'
        exec ${bb} vi "$@"
        EOF
        mkdir -p $out/share/nano
        echo 'syntax "sh" "\.sh$"' > $out/share/nano/sh.nanorc
      '';
    };

    # ------------------------------------------------------------ programs

    hello = mkPkg {
      pname = "hello";
      version = "2.12.1";
      meta = { license = licenses.gpl3Plus; homepage = "https://www.gnu.org/software/hello/manual/"; };
      script = ''
        mkscript $out/bin/hello <<'EOF'
        echo 'Hello, world!'
        EOF
        mkdir -p $out/share/man/man1
        echo '.TH HELLO 1' > $out/share/man/man1/hello.1
      '';
    };

    # The bottom of most closures, as glibc is in nixpkgs.
    glibc = mkPkg {
      pname = "glibc";
      version = "2.38-27";
      meta = { license = [ licenses.lgpl21Plus licenses.gpl2Plus ]; homepage = "https://www.gnu.org/software/libc/"; };
      script = ''
        mkblob $out/lib/libc.so.6 glibc-libc 24
        mkblob $out/lib/ld-linux-x86-64.so.2 glibc-ld 4
        ln -s libc.so.6 $out/lib/libc.so
      '';
    };

    # Shared by curl, git, pythonFull and pandoc.
    zlib = mkPkg {
      pname = "zlib";
      version = "1.3";
      meta = { license = licenses.zlib; homepage = "https://zlib.net"; };
      glibc = self.glibc;
      script = ''
        mkblob $out/lib/libz.so.1.3 zlib 2
        ln -s libz.so.1.3 $out/lib/libz.so.1
        ln -s libz.so.1 $out/lib/libz.so
        echo "NEEDED $glibc/lib/libc.so.6" > $out/lib/.libz-needed
      '';
    };

    openssl = mkPkg {
      pname = "openssl";
      version = "3.0.12";
      inherit (self) glibc cacert;
      script = ''
        mkblob $out/lib/libssl.so.3 openssl-ssl 6
        mkblob $out/lib/libcrypto.so.3 openssl-crypto 12
        echo "NEEDED $glibc/lib/libc.so.6" > $out/lib/.needed
        mkdir -p $out/etc/ssl
        ln -s $cacert/etc/ssl/certs/ca-bundle.crt $out/etc/ssl/cert.pem
        mkscript $out/bin/openssl <<'EOF'
        echo "OpenSSL 3.0.12 24 Oct 2023 (Library: OpenSSL 3.0.12 24 Oct 2023)"
        EOF
      '';
    };

    curl = mkPkg {
      pname = "curl";
      version = "8.4.0";
      meta = { license = licenses.curl; homepage = "https://curl.se/"; };
      inherit (self) zlib openssl;
      script = ''
        mkblob $out/lib/libcurl.so.4 curl 5
        echo "RUNPATH $zlib/lib:$openssl/lib" > $out/lib/.libcurl-runpath
        mkscript $out/bin/curl <<EOF
        case "\$1" in
          --version|-V) echo "curl 8.4.0 (x86_64-pc-linux-gnu) libcurl/8.4.0 zlib/1.3" ;;
          *) exec ${bb} wget -q -O - "\$@" ;;
        esac
        EOF
      '';
    };

    # Carries a hard link (libexec/git-core/git, as real git has many), and a
    # mix of executable and plain files.
    git = mkPkg {
      pname = "git";
      version = "2.42.0";
      meta = { license = licenses.gpl2Plus; homepage = "https://git-scm.com/"; };
      inherit (self) zlib openssl curl;
      script = ''
        mkscript $out/bin/git <<EOF
        # links: $zlib/lib $openssl/lib
        case "\$1" in
          --version|version) echo "git version 2.42.0" ;;
          remote-http*) shift; exec $curl/bin/curl "\$@" ;;
          *) echo "git: '\$1' is not a git command in this demo" >&2; exit 1 ;;
        esac
        EOF
        mkdir -p $out/libexec/git-core
        ln $out/bin/git $out/libexec/git-core/git
        t=$out/share/git-core/templates
        mkdir -p $t/hooks $t/info
        echo "Unnamed repository; edit this file to name the repository." > $t/description
        printf '# git ls-files --others --exclude-from=.git/info/exclude\n' > $t/info/exclude
        mkscript $t/hooks/pre-commit.sample <<'EOF'
        exit 0
        EOF
      '';
    };

    jq = mkPkg {
      pname = "jq";
      version = "1.7";
      meta = { license = licenses.mit; homepage = "https://jqlang.github.io/jq/"; };
      inherit (self) glibc;
      script = ''
        mkblob $out/lib/libjq.so.1 jq 3
        mkscript $out/bin/jq <<EOF
        # needs $glibc/lib/libc.so.6
        echo "jq-1.7"
        EOF
      '';
    };

    # camelCase at the top level: reachable as `pythonfull` too.
    pythonFull = mkPkg {
      pname = "python3";
      version = "3.11.6";
      meta = { license = licenses.psfl; homepage = "https://www.python.org"; };
      inherit (self) zlib openssl;
      script = ''
        mkscript $out/bin/python3 <<EOF
        # links: $zlib/lib $openssl/lib
        echo "Python 3.11.6"
        EOF
        ln -s python3 $out/bin/python
        l=$out/lib/python3.11
        mkdir -p $l/json
        echo 'import sys' > $l/os.py
        echo 'def loads(s): pass' > $l/json/__init__.py
      '';
    };

    gmp = mkPkg {
      pname = "gmp";
      version = "6.3.0";
      meta = { license = [ licenses.lgpl3Plus licenses.gpl2Plus ]; homepage = "https://gmplib.org/"; };
      inherit (self) glibc;
      script = ''
        mkblob $out/lib/libgmp.so.10 gmp 4
        echo "NEEDED $glibc/lib/libc.so.6" > $out/lib/.needed
      '';
    };

    # ------------------------------------ what real package sets also hold

    # Several outputs, the programs not in the default one: nixpkgs says
    # which to install in `meta.outputsToInstall` (what nix-env and
    # buildEnv install). `xmllint` is only in `bin`, its page only in `man`.
    libxml2 = mkPkg {
      pname = "libxml2";
      version = "2.11.5";
      outputs = [ "out" "bin" "man" ];
      inherit (self) zlib;
      script = ''
        mkblob $out/lib/libxml2.so.2 libxml2 6
        echo "NEEDED $zlib/lib/libz.so.1" > $out/lib/.needed
        mkscript $bin/bin/xmllint <<EOF
        # links: $out/lib/libxml2.so.2
        echo "xmllint: using libxml version 21105"
        EOF
        mkdir -p $man/share/man/man1
        echo '.TH XMLLINT 1' > $man/share/man/man1/xmllint.1
      '';
      meta = {
        outputsToInstall = [ "bin" "man" ];
        license = licenses.mit;
        homepage = "https://gitlab.gnome.org/GNOME/libxml2";
      };
    };

    # A removed alias, as nixpkgs' aliases.nix keeps them.
    hello-old = throw "'hello-old' has been renamed to/replaced by 'hello'"; # Converted to throw 2024-01-01

    # Refused at evaluation (see checkMeta).
    ncdu = mkPkg {
      pname = "ncdu";
      version = "2.3";
      script = "mkdir -p $out/bin";
      meta.broken = true;
    };
    unrar = mkPkg {
      pname = "unrar";
      version = "6.2.12";
      script = "mkdir -p $out/bin";
      meta.license = { free = false; shortName = "unfreeRedistributable"; fullName = "Unfree redistributable"; };
    };
    openssl_1_1 = mkPkg {
      pname = "openssl";
      version = "1.1.1w";
      script = "mkdir -p $out/lib";
      meta.knownVulnerabilities = [ "OpenSSL 1.1 is end of life: CVE-2023-5678" ];
    };

    # Evaluates, but its build fails (as a package whose compiler broke
    # would), and a package that needs it cannot be built either.
    leftpad = mkPkg {
      pname = "leftpad";
      version = "1.3.0";
      script = ''
        echo "checking for a C compiler... cc"
        echo "configure: error: C compiler cannot create executables" >&2
        exit 1
      '';
    };
    padder = mkPkg {
      pname = "padder";
      version = "0.4";
      inherit (self) leftpad;
      script = ''
        mkscript $out/bin/padder <<EOF
        # links: $leftpad/lib
        EOF
      '';
    };

    # Nested and camelCase, as `haskellPackages.pandoc` in nixpkgs.
    haskellPackages = {
      pandoc = mkPkg {
        pname = "pandoc";
        version = "3.1.9";
        inherit (self) gmp zlib;
        script = ''
          mkblob $out/lib/libHSpandoc.so pandoc 40
          mkscript $out/bin/pandoc <<EOF
          # links: $gmp/lib $zlib/lib
          echo "pandoc 3.1.9"
          EOF
        '';
      };
    };

    # Nested: `xorg` itself is not a package, `xorg.xev` is.
    xorg = {
      libX11 = mkPkg {
        pname = "libX11";
        version = "1.8.7";
        inherit (self) glibc;
        script = ''
          mkblob $out/lib/libX11.so.6.4.0 libX11 8
          ln -s libX11.so.6.4.0 $out/lib/libX11.so.6
          echo "NEEDED $glibc/lib/libc.so.6" > $out/lib/.needed
        '';
      };
      xev = mkPkg {
        pname = "xev";
        version = "1.2.5";
        libX11 = self.xorg.libX11;
        script = ''
          mkscript $out/bin/xev <<EOF
          # links: $libX11/lib
          echo "xev: unable to open display" >&2; exit 1
          EOF
        '';
      };
      xeyes = mkPkg {
        pname = "xeyes";
        version = "1.3.0";
        libX11 = self.xorg.libX11;
        script = ''
          mkscript $out/bin/xeyes <<EOF
          # links: $libX11/lib
          echo "xeyes: unable to open display" >&2; exit 1
          EOF
        '';
      };
    };
  };
in
self
