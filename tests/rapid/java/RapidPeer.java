import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.BufferedReader;
import java.io.EOFException;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HexFormat;

/**
 * A RAPID peer for pinfold's codec tests: it uses ObjectOutputStream and ObjectInputStream the way
 * RAPID's DS, SLAM, VMM and AS do. One case per line of stdin, one line of stdout per case.
 *
 * <pre>
 * java RapidPeer write   a case is ops: byte:N int:N long:N utf:HEX list:COUNT:HEX,HEX,... raw:N flush
 *                        prints the hex of the bytes that reached the socket
 * java RapidPeer read    a case is the hex of a stream, then kinds: byte int long utf list raw
 *                        prints what it read, in the ops syntax, then "trailing" if bytes were left
 * </pre>
 *
 * Strings are the hex of their UTF-8. "raw:N" writes to the socket's own stream, under the object
 * stream, as the VMM does for DS_MIGRATION_VM_AS. List elements are interned, so that equal strings
 * are the same object and the stream shares them, as RAPID's string literals are.
 */
public final class RapidPeer {
    private static final HexFormat HEX = HexFormat.of();

    public static void main(String[] args) throws IOException {
        boolean write = args.length == 1 && args[0].equals("write");
        BufferedReader lines = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        for (String line; (line = lines.readLine()) != null; ) {
            String result;
            try {
                result = write ? write(line) : read(line);
            } catch (Exception e) {
                result = "error: " + e;
            }
            System.out.println(result);
        }
    }

    private static String write(String script) throws IOException {
        ByteArrayOutputStream socket = new ByteArrayOutputStream();
        ObjectOutputStream out = new ObjectOutputStream(socket);
        for (String op : script.trim().split(" +")) {
            String[] part = op.split(":", 2);
            switch (part[0]) {
                case "" -> { }
                case "byte" -> out.writeByte(Integer.parseInt(part[1]));
                case "int" -> out.writeInt(Integer.parseInt(part[1]));
                case "long" -> out.writeLong(Long.parseLong(part[1]));
                case "utf" -> out.writeUTF(text(part[1]));
                case "list" -> out.writeObject(list(part[1]));
                case "raw" -> socket.write(Integer.parseInt(part[1]));
                case "flush" -> out.flush();
                default -> throw new IllegalArgumentException("unknown op " + op);
            }
        }
        return HEX.formatHex(socket.toByteArray());
    }

    @SuppressWarnings("unchecked")
    private static String read(String line) throws IOException, ClassNotFoundException {
        String[] word = line.trim().split(" +");
        ByteArrayInputStream socket = new ByteArrayInputStream(HEX.parseHex(word[0]));
        ObjectInputStream in = new ObjectInputStream(socket);
        StringBuilder values = new StringBuilder();
        for (int i = 1; i < word.length; i++) {
            String value = switch (word[i]) {
                case "byte" -> "byte:" + in.readByte();
                case "int" -> "int:" + in.readInt();
                case "long" -> "long:" + in.readLong();
                case "utf" -> "utf:" + hex(in.readUTF());
                case "list" -> {
                    ArrayList<String> list = (ArrayList<String>) in.readObject();
                    StringBuilder s = new StringBuilder("list:" + list.size() + ":");
                    for (int j = 0; j < list.size(); j++) {
                        s.append(j == 0 ? "" : ",").append(hex(list.get(j)));
                    }
                    yield s.toString();
                }
                case "raw" -> {
                    int b = socket.read();
                    if (b < 0) {
                        throw new EOFException();
                    }
                    yield "raw:" + (byte) b;
                }
                default -> throw new IllegalArgumentException("unknown kind " + word[i]);
            };
            values.append(i == 1 ? "" : " ").append(value);
        }
        if (in.available() > 0 || socket.available() > 0) {
            values.append(" trailing");
        }
        return values.toString();
    }

    private static ArrayList<String> list(String spec) {
        String[] part = spec.split(":", 2);
        int count = Integer.parseInt(part[0]);
        ArrayList<String> list = new ArrayList<>();
        String[] element = part[1].split(",", -1);
        for (int i = 0; i < count; i++) {
            list.add(text(element[i]).intern());
        }
        return list;
    }

    private static String text(String hex) {
        return new String(HEX.parseHex(hex), StandardCharsets.UTF_8);
    }

    private static String hex(String text) {
        return HEX.formatHex(text.getBytes(StandardCharsets.UTF_8));
    }
}
