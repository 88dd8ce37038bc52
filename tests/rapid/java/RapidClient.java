import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.net.Socket;
import java.util.ArrayList;
import java.util.List;

/**
 * A RAPID client as RAPID's SLAM, DS and AS code talk to a VMM: a socket wrapped in an
 * ObjectOutputStream (created first: it sends the header) and an ObjectInputStream, primitive
 * writes, flush, primitive or object reads. For pinfold's tests: the VMM is driven by a JDK.
 *
 * <pre>
 * java RapidClient HOST PORT OP...
 *   byte:N int:N long:N utf:TEXT   write a value          flush     flush the stream
 *   ?byte ?int ?long ?utf ?list    read a value and print it (lists as a,b,c)
 * </pre>
 * Prints what it read, one value per line; stops reading after a status byte of 0.
 */
public final class RapidClient {
    public static void main(String[] args) throws Exception {
        try (Socket socket = new Socket(args[0], Integer.parseInt(args[1]))) {
            socket.setSoTimeout(60_000);
            ObjectOutputStream out = new ObjectOutputStream(socket.getOutputStream());
            out.flush();
            ObjectInputStream in = new ObjectInputStream(socket.getInputStream());
            boolean first = true;
            for (int i = 2; i < args.length; i++) {
                String[] op = args[i].split(":", 2);
                switch (op[0]) {
                    case "byte" -> out.writeByte(Integer.parseInt(op[1]));
                    case "int" -> out.writeInt(Integer.parseInt(op[1]));
                    case "long" -> out.writeLong(Long.parseLong(op[1]));
                    case "utf" -> out.writeUTF(op[1]);
                    case "flush" -> out.flush();
                    case "?byte" -> {
                        byte status = in.readByte();
                        System.out.println(status);
                        if (first && status == 0) {
                            return;
                        }
                        first = false;
                    }
                    case "?int" -> System.out.println(in.readInt());
                    case "?long" -> System.out.println(in.readLong());
                    case "?utf" -> System.out.println(in.readUTF());
                    case "?list" -> {
                        @SuppressWarnings("unchecked")
                        List<String> list = (ArrayList<String>) in.readObject();
                        System.out.println(String.join(",", list));
                    }
                    default -> throw new IllegalArgumentException("unknown op " + args[i]);
                }
            }
        }
    }
}
